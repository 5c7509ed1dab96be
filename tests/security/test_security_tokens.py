"""OAuth2 client-credentials: the sans-IO service, then real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import urllib.error
import urllib.parse
import urllib.request

import pytest

from mesh.errors import ConfigError, Malformed
from security import jwt, keys
from security.clients import ClientRegistry, check_secret, hash_secret
from security.token_http import JWKS_PATH, TOKEN_PATH, TokenHTTPServer
from security.tokens import SigningKeyRing, TokenService, TokenVerifier, parse_basic_auth
from security.trust import TrustStore
from tests.helpers import wait_for

ISS, AUD = "https://auth.agp.test", "agp-mesh"
SECRET = "correct horse battery staple"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def analyst_keys():
    return keys.generate()


@pytest.fixture
def registry(analyst_keys):
    reg = ClientRegistry(scrypt_n=2**10)  # fast hashes in tests; production uses 2**14
    reg.register("analyst", SECRET, curve_public=analyst_keys.public, roles=["client"],
                 scopes=["mesh", "metrics"])
    return reg


@pytest.fixture
def service(registry, clock):
    return TokenService(issuer=ISS, audience=AUD, registry=registry, ttl=300, clock=clock)


def form(**kw):
    return {"grant_type": "client_credentials", **kw}


def issue(service, **kw):
    status, body, headers = service.token_endpoint(form(**kw), ("analyst", SECRET))
    assert status == 200, body
    return body


def error_of(response):
    status, body, headers = response
    assert set(body) == {"error", "error_description"}
    assert headers["Cache-Control"] == "no-store"
    return status, body["error"], headers


# ---- the sans-IO endpoint -----------------------------------------------------------------

def test_success_response_is_rfc6749_5_1(service, analyst_keys, clock):
    status, body, headers = service.token_endpoint(form(), ("analyst", SECRET))
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "mesh metrics"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Pragma"] == "no-cache"
    claims = service.verifier().verify(body["access_token"], analyst_keys.public, now=clock.t)
    assert claims["sub"] == "analyst"
    assert claims["roles"] == ["client"]
    assert claims["cnf"] == {"curve": analyst_keys.public.decode()}
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"]


def test_credentials_in_body_and_narrower_scope(service):
    status, body, _ = service.token_endpoint(
        form(client_id="analyst", client_secret=SECRET, scope="metrics"), None)
    assert status == 200
    assert body["scope"] == "metrics"


def test_each_token_has_a_fresh_jti(service, clock):
    verifier = service.verifier()
    jtis = {verifier.verify(issue(service)["access_token"], None, now=clock.t)["jti"]
            for _ in range(5)}
    assert len(jtis) == 5


@pytest.mark.parametrize(("params", "auth"), [
    ({}, ("analyst", SECRET)),  # no grant_type
    (form(scope=["mesh", "metrics"]), ("analyst", SECRET)),  # repeated parameter
    (form(client_secret=SECRET), ("analyst", SECRET)),  # two auth methods
    (form(client_id="other"), ("analyst", SECRET)),  # body id differs from Basic
    (form(grant_type="x" * 5000), ("analyst", SECRET)),
])
def test_invalid_request(service, params, auth):
    if "grant_type" not in params:
        params = {}
    status, error, _ = error_of(service.token_endpoint(params, auth))
    assert (status, error) in ((400, "invalid_request"), (400, "unsupported_grant_type"))
    if params.get("grant_type", "").startswith("x"):
        assert error == "invalid_request"


@pytest.mark.parametrize(("params", "auth"), [
    (form(), ("analyst", "wrong secret value")),
    (form(), ("nobody", SECRET)),
    (form(client_id="analyst", client_secret="wrong secret value"), None),
    (form(), None),
    (form(client_id="analyst"), None),
    (form(), ("analyst", "x" * 5000)),
])
def test_invalid_client_is_401_with_www_authenticate(service, params, auth):
    status, error, headers = error_of(service.token_endpoint(params, auth))
    assert (status, error) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic realm=")


def test_unsupported_grant_type(service):
    status, error, _ = error_of(service.token_endpoint(form(grant_type="password"),
                                                       ("analyst", SECRET)))
    assert (status, error) == (400, "unsupported_grant_type")


@pytest.mark.parametrize("scope", ["admin", "mesh admin", "mesh  metrics", "bad\"scope", ""])
def test_invalid_scope(service, scope):
    status, error, _ = error_of(service.token_endpoint(form(scope=scope), ("analyst", SECRET)))
    assert (status, error) == (400, "invalid_scope")


def test_invalid_grant_when_curve_key_is_not_the_clients(service):
    status, error, _ = error_of(service.token_endpoint(
        form(curve_key=keys.generate().public.decode()), ("analyst", SECRET)))
    assert (status, error) == (400, "invalid_grant")


def test_invalid_grant_when_client_key_is_revoked(registry, analyst_keys, clock, tmp_path):
    trust = TrustStore(tmp_path / "trust")
    trust.enroll("analyst", analyst_keys.public)
    service = TokenService(issuer=ISS, audience=AUD, registry=registry, trust=trust, clock=clock)
    assert issue(service)["access_token"]
    trust.revoke("analyst")
    status, error, _ = error_of(service.token_endpoint(form(), ("analyst", SECRET)))
    assert (status, error) == (400, "invalid_grant")


def test_unauthorized_client(registry, service, analyst_keys):
    registry.register("limited", SECRET, curve_public=analyst_keys.public, grant_types=[])
    status, error, _ = error_of(service.token_endpoint(form(), ("limited", SECRET)))
    assert (status, error) == (400, "unauthorized_client")


# ---- verification, revocation, rotation ---------------------------------------------------

def test_revoked_jti_refused(service, analyst_keys, clock):
    token = issue(service)["access_token"]
    verifier = service.verifier()
    jti = verifier.verify(token, analyst_keys.public, now=clock.t)["jti"]
    service.revoke(jti)
    assert service.is_revoked(jti)
    with pytest.raises(jwt.TokenError) as info:
        verifier.verify(token, analyst_keys.public, now=clock.t)
    assert info.value.reason == "revoked"


def test_a_revoked_jti_stays_refused_after_a_restart(registry, analyst_keys, clock, tmp_path):
    path = tmp_path / "auth" / "revoked_tokens.json"
    ring = SigningKeyRing()  # (on disk in a real home: it survives the restart too)

    def restarted() -> TokenService:
        return TokenService(issuer=ISS, audience=AUD, registry=registry,
                            keyring=ring, clock=clock, revocations_path=path)

    before = restarted()
    token = issue(before)["access_token"]
    jti = before.verifier().verify(token, analyst_keys.public, now=clock.t)["jti"]
    before.revoke(jti)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    after = restarted()
    with pytest.raises(jwt.TokenError) as info:
        after.verifier().verify(token, analyst_keys.public, now=clock.t)
    assert info.value.reason == "revoked"
    clock.t += 25 * 3600  # past the longest lifetime a token may have: not kept
    assert not restarted().is_revoked(jti)


def test_a_revocation_outlives_a_token_signed_with_a_longer_lifetime(registry, analyst_keys,
                                                                     clock, tmp_path):
    """Signed for an hour, revoked after a restart with 60 s tokens: the revocation must
    hold as long as the token, not ``now + 60 s``."""
    path = tmp_path / "auth" / "revoked_tokens.json"
    ring = SigningKeyRing()

    def started(ttl: int) -> TokenService:
        return TokenService(issuer=ISS, audience=AUD, registry=registry, keyring=ring,
                            ttl=ttl, clock=clock, revocations_path=path)

    token = issue(started(3600))["access_token"]
    after = started(60)
    jti = after.verifier().verify(token, analyst_keys.public, now=clock.t)["jti"]
    after.revoke(jti)
    clock.t += 1800  # the token has half an hour to live
    with pytest.raises(jwt.TokenError) as info:
        started(60).verifier().verify(token, analyst_keys.public, now=clock.t)
    assert info.value.reason == "revoked"


@pytest.mark.parametrize("ttl", [0, -5, 86_401])
def test_a_token_lifetime_out_of_range_is_a_config_error(registry, ttl):
    with pytest.raises(ConfigError, match="token lifetime"):
        TokenService(issuer=ISS, audience=AUD, registry=registry, ttl=ttl)


def test_token_bound_to_another_key_refused(service, clock):
    token = issue(service)["access_token"]
    with pytest.raises(jwt.TokenError) as info:
        service.verifier().verify(token, keys.generate().public, now=clock.t)
    assert info.value.reason == "binding_mismatch"


def test_expired_token_refused_by_verifier(service, analyst_keys, clock):
    token = issue(service)["access_token"]
    with pytest.raises(jwt.TokenError) as info:
        service.verifier().verify(token, analyst_keys.public, now=clock.t + 400)
    assert info.value.reason == "expired"


def test_rotation_keeps_old_keys_in_jwks_then_drops_them(service, analyst_keys, clock):
    old_token = issue(service)["access_token"]
    old_kid = service.keyring.current_kid
    new_kid = service.rotate_signing_key()
    assert new_kid != old_kid
    assert {k["kid"] for k in service.jwks()["keys"]} == {old_kid, new_kid}
    new_token = issue(service)["access_token"]
    assert jwt.decode_unverified(new_token)[0]["kid"] == new_kid
    verifier = TokenVerifier(service.jwks(), issuer=ISS, audience=AUD)  # from published JWKS
    assert verifier.verify(old_token, analyst_keys.public, now=clock.t)["sub"] == "analyst"
    service.rotate_signing_key()
    service.rotate_signing_key()  # keep=2: the first key is gone now
    with pytest.raises(jwt.TokenError) as info:
        service.verifier().verify(old_token, analyst_keys.public, now=clock.t)
    assert info.value.reason == "unknown_kid"


def test_keyring_save_and_load(tmp_path, service, analyst_keys, clock):
    token = issue(service)["access_token"]
    path = tmp_path / "signing.json"
    service.keyring.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = SigningKeyRing.load(path)
    assert ring.current_kid == service.keyring.current_kid
    TokenVerifier(ring.key_set(), issuer=ISS, audience=AUD).verify(token, analyst_keys.public,
                                                                    now=clock.t)
    path.write_text("{}")
    with pytest.raises(ConfigError):
        SigningKeyRing.load(path)


def test_registry_stores_only_hashes(tmp_path, registry):
    path = tmp_path / "clients.json"
    registry.save(path)
    assert SECRET not in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = ClientRegistry.load(path)
    assert loaded.authenticate("analyst", SECRET) is not None
    assert loaded.authenticate("analyst", "wrong secret value") is None
    path.write_text(json.dumps({"version": 1, "clients": [{"client_id": "x"}]}))
    with pytest.raises(ConfigError):
        ClientRegistry.load(path)


def test_secret_hashing():
    h = hash_secret("s" * 20, n=2**10)
    assert h.startswith("scrypt$1024$")
    assert "s" * 20 not in h
    assert check_secret("s" * 20, h)
    assert not check_secret("t" * 20, h)
    assert hash_secret("s" * 20, n=2**10) != h  # salted
    with pytest.raises(ConfigError):
        check_secret("x", "scrypt$3$8$1$AAAA$AAAA")
    with pytest.raises(ConfigError):
        ClientRegistry().register("short", "too-short", curve_public=keys.generate().public)


def test_parse_basic_auth_form_decodes():
    raw = base64.b64encode(b"my+client:p%3Ass%20word").decode()
    assert parse_basic_auth(f"Basic {raw}") == ("my client", "p:ss word")
    no_colon = "Basic " + base64.b64encode(b"nocolon").decode()
    for bad in ["Bearer abc", "Basic", "Basic !!!", no_colon]:
        with pytest.raises(Malformed):
            parse_basic_auth(bad)


# ---- over HTTP ----------------------------------------------------------------------------

@pytest.fixture
def http(service):
    server = TokenHTTPServer(service)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read()), dict(err.headers)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def basic(client_id, secret):
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode(), **FORM}


def test_http_token_with_basic_auth_verifies_against_published_jwks(http, analyst_keys, clock):
    status, body, headers = post(http.url + TOKEN_PATH, b"grant_type=client_credentials",
                                 basic("analyst", SECRET))
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")
    with urllib.request.urlopen(http.url + JWKS_PATH, timeout=15) as resp:
        jwks = json.loads(resp.read())
    claims = TokenVerifier(jwks, issuer=ISS, audience=AUD).verify(
        body["access_token"], analyst_keys.public, now=clock.t)
    assert claims["sub"] == "analyst"


def test_http_token_with_body_credentials(http):
    body = urllib.parse.urlencode(form(client_id="analyst", client_secret=SECRET)).encode()
    status, resp, _ = post(http.url + TOKEN_PATH, body, FORM)
    assert status == 200
    assert resp["access_token"].count(".") == 2


def test_http_bad_secret_is_401_with_www_authenticate(http):
    status, body, headers = post(http.url + TOKEN_PATH, b"grant_type=client_credentials",
                                 basic("analyst", "wrong secret value"))
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(("body", "headers", "error"), [
    (b'{"grant_type": "client_credentials"}', {"Content-Type": "application/json"},
     "invalid_request"),
    (b"grant_type=client_credentials&" + b"x=1&" * 3000, FORM, "invalid_request"),
    (b"%%%", FORM, "invalid_request"),
    (b"grant_type=client_credentials", {**FORM, "Authorization": "Basic !!"},
     "invalid_client"),
])
def test_http_bad_requests(http, body, headers, error):
    status, resp, _ = post(http.url + TOKEN_PATH, body, headers)
    assert resp["error"] == error
    assert status in (400, 401)


def test_http_unknown_path_and_method(http):
    status, body, _ = post(http.url + "/nope", b"", FORM)
    assert status == 404
    req = urllib.request.Request(http.url + TOKEN_PATH, method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=15)
    assert info.value.code == 405
    info.value.close()


def test_http_server_stops_and_frees_its_port(service):
    server = TokenHTTPServer(service)
    server.start()
    port = server.port
    assert port > 0
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_connections_past_the_cap_are_answered_busy_and_counted(service):
    """Two idle connections hold both slots (a thread each, for up to the read timeout);
    a third is answered 503 with Retry-After at once, counted, and closed; once a slot is
    free the endpoint serves again."""
    server = TokenHTTPServer(service, max_connections=2)
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        wait_for(lambda: server.serving == 2, message="both connections taken")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as third:
            answer = third.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in answer
        assert b"temporarily_unavailable" in answer
        assert server.refused_busy >= 1
        (fam,) = list(server.collect())
        assert fam.name == "agp_token_endpoint_refused"
        assert fam.samples[0].labels == {"reason": "busy"}
        assert fam.samples[0].value == server.refused_busy
    finally:
        for s in held:
            s.close()
    try:
        # the held threads end when their connections close: served again
        wait_for(lambda: server.serving == 0, message="the held connections' threads ended")
        with urllib.request.urlopen(server.url + JWKS_PATH, timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()
