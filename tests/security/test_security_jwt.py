"""JWT with EdDSA: conformance with RFC 8037, independent verification, every refusal."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from mesh.errors import Unauthenticated
from security import jwt, keys
from security.jwt import TokenError

ISS, AUD, NOW = "https://auth.agp.test", "agp-mesh", 1_700_000_000
KID = "k1"


@pytest.fixture
def sk():
    return SigningKey.generate()


def claims(**over):
    c = {"iss": ISS, "sub": "analyst", "aud": AUD, "iat": NOW, "nbf": NOW, "exp": NOW + 300,
         "jti": "j-1", "scope": "mesh", "roles": ["client"],
         "cnf": {"curve": keys.generate().public.decode()}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: dict, sk: SigningKey) -> str:
    """A token built by hand, signed correctly, whatever its header says."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sk.sign(signing_input.encode()).signature)}"


def verify(token, key, **kw):
    kw.setdefault("now", NOW + 10)
    return jwt.verify(token, key, issuer=ISS, audience=AUD, **kw)


def reason_of(token, key, **kw) -> str:
    with pytest.raises(TokenError) as info:
        verify(token, key, **kw)
    assert isinstance(info.value, Unauthenticated)
    assert info.value.reason in str(info.value)
    return info.value.reason


# ---- conformance and interop --------------------------------------------------------------

RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def test_rfc8037_key_jwk_and_thumbprint():
    sk = SigningKey(jwt.b64url_decode(RFC8037_D))
    assert jwt.jwk(sk.verify_key)["x"] == RFC8037_X
    assert jwt.thumbprint(sk.verify_key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc8037_signature_example():
    sk = SigningKey(jwt.b64url_decode(RFC8037_D))
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    assert jwt.b64url_encode(sk.sign(signing_input).signature) == (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")


def test_roundtrip_returns_the_claims(sk):
    c = claims()
    assert verify(jwt.encode(c, sk, KID), {KID: sk.verify_key}) == c


def test_any_standard_implementation_can_verify(sk):
    """Decode with base64/json only and check the signature with a bare VerifyKey from JWK."""
    token = jwt.encode(claims(), sk, KID)
    public_jwk = jwt.KeySet({KID: sk.verify_key}).to_jwks()["keys"][0]
    assert public_jwk == {"kty": "OKP", "crv": "Ed25519", "x": public_jwk["x"], "kid": KID,
                          "alg": "EdDSA", "use": "sig"}
    h, p, s = token.split(".")
    pad = lambda t: t + "=" * (-len(t) % 4)  # noqa: E731
    header = json.loads(base64.urlsafe_b64decode(pad(h)))
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": KID}
    vk = VerifyKey(base64.urlsafe_b64decode(pad(public_jwk["x"])))
    vk.verify(f"{h}.{p}".encode(), base64.urlsafe_b64decode(pad(s)))
    assert json.loads(base64.urlsafe_b64decode(pad(p)))["sub"] == "analyst"


def test_jwks_roundtrip_skips_foreign_keys(sk):
    doc = jwt.KeySet({KID: sk.verify_key}).to_jwks()
    doc["keys"].append({"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"})
    doc["keys"].append({"kty": "OKP", "crv": "X25519", "kid": "x", "x": RFC8037_X})
    doc["keys"].append({"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"})
    ks = jwt.KeySet.from_jwks(doc)
    assert ks.kids() == [KID]
    assert verify(jwt.encode(claims(), sk, KID), doc)["sub"] == "analyst"


def test_single_key_and_audience_list(sk):
    token = jwt.encode(claims(aud=["other", AUD]), sk, "any-kid")
    assert verify(token, sk.verify_key)["aud"] == ["other", AUD]


def test_leeway_tolerates_small_clock_skew(sk):
    token = jwt.encode(claims(exp=NOW), sk, KID)
    assert verify(token, sk.verify_key, now=NOW + 10, leeway=30)
    assert reason_of(token, sk.verify_key, now=NOW + 10, leeway=0) == jwt.REASON_EXPIRED


# ---- every refusal, by name ---------------------------------------------------------------

def test_expired_token_refused(sk):
    assert reason_of(jwt.encode(claims(exp=NOW - 100), sk, KID), sk.verify_key) == "expired"


def test_not_yet_valid_token_refused(sk):
    token = jwt.encode(claims(nbf=NOW + 3600), sk, KID)
    assert reason_of(token, sk.verify_key) == "not_yet_valid"


def test_token_issued_in_the_future_refused(sk):
    token = jwt.encode(claims(iat=NOW + 3600, nbf=None), sk, KID)
    assert reason_of(token, sk.verify_key) == "not_yet_valid"


def test_forged_signature_refused(sk):
    forger = SigningKey.generate()
    token = jwt.encode(claims(roles=["admin"]), forger, KID)
    assert reason_of(token, {KID: sk.verify_key}) == "bad_signature"


def test_tampered_payload_refused(sk):
    h, _, s = jwt.encode(claims(), sk, KID).split(".")
    evil = b64(json.dumps(claims(roles=["admin"])).encode())
    assert reason_of(f"{h}.{evil}.{s}", sk.verify_key) == "bad_signature"


def test_alg_none_refused(sk):
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    assert reason_of(f"{header}.{body}.", sk.verify_key) == "bad_alg"


@pytest.mark.parametrize("alg", ["HS256", "eddsa", "ES256", "", None, ["EdDSA"]])
def test_other_algorithms_refused(sk, alg):
    assert reason_of(forge({"alg": alg, "kid": KID}, claims(), sk), sk.verify_key) == "bad_alg"


def test_hmac_with_public_key_confusion_refused(sk):
    import hmac as hmac_mod
    header = b64(json.dumps({"alg": "HS256", "kid": KID}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac_mod.new(bytes(sk.verify_key), f"{header}.{body}".encode(), hashlib.sha256)
    assert reason_of(f"{header}.{body}.{b64(mac.digest())}", sk.verify_key) == "bad_alg"


def test_wrong_audience_refused(sk):
    assert reason_of(jwt.encode(claims(aud="someone-else"), sk, KID),
                     sk.verify_key) == "wrong_audience"


def test_wrong_issuer_refused(sk):
    assert reason_of(jwt.encode(claims(iss="https://evil"), sk, KID),
                     sk.verify_key) == "wrong_issuer"


@pytest.mark.parametrize("name", jwt.REQUIRED_CLAIMS)
def test_missing_required_claim_refused(sk, name):
    assert reason_of(jwt.encode(claims(**{name: None}), sk, KID),
                     sk.verify_key) == "missing_claim"


def test_unknown_kid_refused(sk):
    token = jwt.encode(claims(), sk, "unknown")
    assert reason_of(token, {KID: sk.verify_key}) == "unknown_kid"
    assert reason_of(forge({"alg": "EdDSA"}, claims(), sk), {KID: sk.verify_key}) == "unknown_kid"


def test_oversized_token_refused(sk):
    token = jwt.encode(claims(), sk, KID) + "A" * jwt.MAX_TOKEN_BYTES
    assert reason_of(token, sk.verify_key) == "too_large"
    assert reason_of(token.encode(), sk.verify_key) == "too_large"
    with pytest.raises(Exception, match="over"):
        jwt.encode(claims(pad="x" * jwt.MAX_TOKEN_BYTES), sk, KID)


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "..", "!!!.e30.AA", "e30.e30=.AA", "e30.e30.A",
    "bm90IGpzb24.e30.AA",  # header is not JSON
    "W10.e30.AA",  # header is a JSON array
    "eyJhbGciOiJFZERTQSIsImFsZyI6Im5vbmUifQ.e30.AA",  # duplicate "alg"
    "ew.e30.AA",  # non-canonical base64 (trailing bits)
    "éé.e30.AA",
    b"\xff\xfe.e30.AA",
    12345,
])
def test_malformed_tokens_refused(sk, token):
    assert reason_of(token, sk.verify_key) in ("malformed", "bad_alg")


def test_crit_header_refused(sk):
    token = forge({"alg": "EdDSA", "crit": ["exp"], "kid": KID}, claims(), sk)
    assert reason_of(token, sk.verify_key) == "malformed"


def test_nan_and_duplicate_claims_refused(sk):
    h = b64(json.dumps({"alg": "EdDSA"}).encode())
    for raw in (b'{"exp": NaN}', b'{"sub": "a", "sub": "admin"}'):
        p = b64(raw)
        token = f"{h}.{p}.{b64(sk.sign(f'{h}.{p}'.encode()).signature)}"
        assert reason_of(token, sk.verify_key) == "malformed"


@pytest.mark.parametrize("over", [
    {"exp": "tomorrow"}, {"exp": True}, {"iat": [1]}, {"aud": 5}, {"aud": [AUD, 5]},
    {"sub": 7}, {"roles": "admin"}, {"roles": [1]}, {"cnf": "key"}, {"scope": ["a"]},
])
def test_badly_typed_claims_refused(sk, over):
    assert reason_of(jwt.encode(claims(**over), sk, KID), sk.verify_key) == "bad_claim"


# ---- binding to the CURVE key -------------------------------------------------------------

def test_binding_matches_the_connection_key():
    pair = keys.generate()
    c = claims(cnf={"curve": pair.public.decode()})
    jwt.check_binding(c, pair.public)
    jwt.check_binding(c, pair.public_raw)


def test_cnf_mismatch_refused():
    c = claims()
    with pytest.raises(TokenError) as info:
        jwt.check_binding(c, keys.generate().public)
    assert info.value.reason == "binding_mismatch"


@pytest.mark.parametrize("cnf", [None, {}, {"curve": 5}, {"curve": "not-a-key"}, "x"])
def test_missing_or_bad_binding_refused(cnf):
    with pytest.raises(TokenError) as info:
        jwt.check_binding(claims(cnf=cnf), keys.generate().public)
    assert info.value.reason == "binding_mismatch"


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.lists(st.text("abcdefghijklmnopqrstuvwxyzABCDEF0123456789-_", max_size=40),
                          min_size=3, max_size=3).map(".".join)))
def test_fuzzed_tokens_only_raise_token_errors(token):
    key = SigningKey(b"\x01" * 32).verify_key
    with pytest.raises(TokenError):
        jwt.verify(token, key, issuer=ISS, audience=AUD)
