"""OAuth2 client-credentials token service (RFC 6749 s4.4), sans-IO.

:meth:`TokenService.token_endpoint` turns a parsed form and the HTTP Basic credentials into
``(status, body, headers)``: the RFC 6749 s5.1 success JSON with ``Cache-Control: no-store``,
or an s5.2 error with its status (``invalid_client`` is 401 with ``WWW-Authenticate``).
Tokens are short-lived EdDSA JWTs (:mod:`security.jwt`) with ``cnf.curve`` bound to the
client's registered CURVE key. ``invalid_grant`` means that key may not be used: it is
revoked or not enrolled in the trust store, or the request's ``curve_key`` names another.

:class:`SigningKeyRing` rotates signing keys and keeps the previous ones in the JWKS until
tokens they signed have expired. :class:`TokenVerifier` is what the router runs at HELLO:
signature and claims, then the revocation list, then the CURVE binding.
:mod:`security.token_http` serves all this over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from nacl.signing import SigningKey

from mesh.errors import ConfigError, Malformed, Unauthenticated

from . import jwt
from .clients import GRANT_CLIENT_CREDENTIALS, SCOPE_TOKEN_RE, Client, ClientRegistry
from .keys import file_signature, normalize_key
from .zap import TrustLike

__all__ = ["RevocationList", "SigningKeyRing", "TokenService", "TokenVerifier",
           "oauth_error", "parse_basic_auth"]

DEFAULT_TTL: Final = 300
MAX_TTL: Final = 86_400  # the longest token lifetime a router signs (and keeps revocations)
MAX_PARAM_LEN: Final = 2048
REALM: Final = "agp-mesh"
_JSON_HEADERS: Final = {"Content-Type": "application/json;charset=UTF-8",
                        "Cache-Control": "no-store", "Pragma": "no-cache"}

Response = tuple[int, dict[str, Any], dict[str, str]]


def oauth_error(error: str, description: str, *, status: int = 400) -> Response:
    """An RFC 6749 s5.2 error response."""
    headers = dict(_JSON_HEADERS)
    if error == "invalid_client":
        status = 401
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}", error="invalid_client"'
    return status, {"error": error, "error_description": description}, headers


def parse_basic_auth(header: str) -> tuple[str, str]:
    """``Authorization: Basic ...`` -> (client_id, secret), form-decoded (RFC 6749 s2.3.1)."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value or len(value) > 4 * MAX_PARAM_LEN:
        raise Malformed("not HTTP Basic credentials")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Malformed("bad Basic credentials encoding") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise Malformed("Basic credentials without ':'")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


class RevocationList:
    """Revoked token ids, each kept until the token would have expired anyway; with a
    ``path``, kept on disk too, so a router restarted within a token's life still refuses
    it (the signing keys outlive a restart: so must what was revoked under them)."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 path: Path | None = None) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._path = path
        if path is not None:
            self._load(path)

    def revoke(self, jti: str, *, until: float) -> None:
        with self._lock:
            self._until[jti] = max(until, self._until.get(jti, 0.0))
            if len(self._until) % 256 == 0:
                self.prune()
            if self._path is not None:
                self._save(self._path)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read revoked tokens {path}: {exc}") from None
        now = self._clock()
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: revoked tokens must be an object of jti: until")
        self._until = {str(j): float(t) for j, t in doc.items()
                       if isinstance(t, (int, float)) and t >= now}

    def _save(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._until, f)
        os.replace(tmp, path)

    def is_revoked(self, jti: str) -> bool:
        return jti in self._until

    def prune(self) -> None:
        now = self._clock()
        for jti in [j for j, t in self._until.items() if t < now]:
            del self._until[jti]


class RevokedOnDisk:
    """The revocations a router keeps in ``path``, read again whenever the file changes:
    for a verifier in another process (a control plane apart from the router), which
    would otherwise take a revoked token for as long as it had to live. A file that cannot
    be read fails each check (ConfigError): a token is refused rather than let in unseen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._list = RevocationList()

    def is_revoked(self, jti: str) -> bool:
        signature = file_signature(self.path)
        if signature != self._signature:
            self._list = RevocationList(path=self.path) if signature is not None \
                else RevocationList()
            self._signature = signature
        return self._list.is_revoked(jti)


class SigningKeyRing:
    """The current Ed25519 signing key plus up to ``keep`` retired ones (still in JWKS)."""

    def __init__(self, *, keep: int = 2) -> None:
        self.keep = keep
        self._keys: list[tuple[str, SigningKey]] = []  # newest last
        self._lock = threading.Lock()
        self.rotate()

    @property
    def current_kid(self) -> str:
        return self._keys[-1][0]

    def rotate(self) -> str:
        """Sign new tokens with a fresh key; older keys stay for verification."""
        key = SigningKey.generate()
        kid = jwt.thumbprint(key.verify_key)
        with self._lock:
            self._keys = [*self._keys, (kid, key)][-(self.keep + 1):]
        return kid

    def sign(self, claims: Mapping[str, Any]) -> str:
        kid, key = self._keys[-1]
        return jwt.encode(claims, key, kid)

    def key_set(self) -> jwt.KeySet:
        return jwt.KeySet({kid: k.verify_key for kid, k in self._keys})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.key_set().to_jwks()

    def save(self, path: str | Path) -> None:
        """Persist the seeds (mode 0600) so a restart keeps issued tokens valid."""
        path = Path(path)
        doc = {"version": 1, "keys": [{"kid": kid, "seed": jwt.b64url_encode(bytes(k))}
                                      for kid, k in self._keys]}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path, *, keep: int = 2) -> SigningKeyRing:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            keys = [(str(e["kid"]), SigningKey(jwt.b64url_decode(e["seed"])))
                    for e in doc["keys"]]
        except (OSError, ValueError, KeyError, TypeError, jwt.TokenError) as exc:
            raise ConfigError(f"cannot load signing keys from {path}: {exc}") from None
        if not keys:
            raise ConfigError(f"no signing keys in {path}")
        ring = cls.__new__(cls)
        ring.keep, ring._keys, ring._lock = keep, keys[-(keep + 1):], threading.Lock()
        return ring


class TokenVerifier:
    """Check an access token as a resource server does (the router, at HELLO)."""

    def __init__(self, keys: jwt.KeysLike | Callable[[], jwt.KeysLike], *, issuer: str,
                 audience: str, revocations: RevocationList | RevokedOnDisk | None = None,
                 leeway: float = jwt.DEFAULT_LEEWAY) -> None:
        self._keys = keys
        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        self.revocations = revocations

    def verify(self, token: str | bytes, connection_key: bytes | str | None, *,
               now: float | None = None) -> dict[str, Any]:
        """Claims of a valid token; ``connection_key`` None skips the binding check."""
        keys = self._keys() if callable(self._keys) else self._keys
        claims = jwt.verify(token, keys, issuer=self.issuer, audience=self.audience,
                            now=now, leeway=self.leeway)
        if self.revocations is not None and self.revocations.is_revoked(claims["jti"]):
            raise jwt.TokenError(jwt.REASON_REVOKED)
        if connection_key is not None:
            jwt.check_binding(claims, connection_key)
        return claims


class TokenService:
    """Issue, revoke and publish the keys of client-credentials access tokens."""

    def __init__(self, *, issuer: str, audience: str, registry: ClientRegistry,
                 keyring: SigningKeyRing | None = None, ttl: int = DEFAULT_TTL,
                 trust: TrustLike | None = None, clock: Callable[[], float] = time.time,
                 revocations_path: Path | None = None) -> None:
        if not 1 <= ttl <= MAX_TTL:
            raise ConfigError(f"token lifetime must be 1..{MAX_TTL} seconds, not {ttl}")
        self.issuer, self.audience, self.ttl = issuer, audience, ttl
        self.registry = registry
        self.keyring = keyring or SigningKeyRing()
        self.trust = trust
        self._clock = clock
        self.revocations = RevocationList(clock=clock, path=revocations_path)

    # ---- the endpoint -------------------------------------------------------------------

    def token_endpoint(self, form: Mapping[str, str | Sequence[str]],
                       basic_auth: tuple[str, str] | None) -> Response:
        """Handle ``POST /oauth2/token``; never raises on bad input."""
        params: dict[str, str] = {}
        for name, value in form.items():
            values = [value] if isinstance(value, str) else list(value)
            if len(values) != 1:
                return oauth_error("invalid_request", f"parameter {name!r} repeated")
            if len(values[0]) > MAX_PARAM_LEN:
                return oauth_error("invalid_request", f"parameter {name!r} too long")
            params[name] = values[0]
        grant_type = params.get("grant_type")
        if not grant_type:
            return oauth_error("invalid_request", "grant_type is required")
        if grant_type != GRANT_CLIENT_CREDENTIALS:
            return oauth_error("unsupported_grant_type", "only client_credentials is supported")
        if basic_auth is not None and "client_secret" in params:
            return oauth_error("invalid_request", "use one client authentication method")
        if basic_auth is not None:
            client_id, secret = basic_auth
            if params.get("client_id", client_id) != client_id:
                return oauth_error("invalid_request", "client_id differs from Basic credentials")
        elif "client_id" in params and "client_secret" in params:
            client_id, secret = params["client_id"], params["client_secret"]
        else:
            return oauth_error("invalid_client", "client authentication required")
        # the file as it is now (one stat): a client made, removed, re-roled or its secret
        # rotated (`agp keys new`, `agp up`) since it was read counts from this request on
        self.registry.reload_if_changed()
        client = self.registry.authenticate(client_id, secret)
        if client is None:
            return oauth_error("invalid_client", "client authentication failed")
        return self._grant(client, params)

    def _grant(self, client: Client, params: Mapping[str, str]) -> Response:
        if GRANT_CLIENT_CREDENTIALS not in client.grant_types:
            return oauth_error("unauthorized_client", "client may not use client_credentials")
        requested = params.get("scope")
        if requested is None:
            scopes = client.scopes
        else:
            wanted = requested.split(" ")
            if not all(SCOPE_TOKEN_RE.fullmatch(s) for s in wanted):
                return oauth_error("invalid_scope", "malformed scope")
            scopes = frozenset(wanted)
            if not scopes <= client.scopes:
                return oauth_error("invalid_scope", "scope exceeds what the client was granted")
        if "curve_key" in params:
            try:
                claimed = normalize_key(params["curve_key"])
            except ConfigError:
                return oauth_error("invalid_request", "curve_key is not a key")
            if claimed != client.curve_public:
                return oauth_error("invalid_grant", "curve_key is not the client's key")
        if self.trust is not None and not self._trusted(client.curve_public):
            return oauth_error("invalid_grant", "the client's CURVE key is not trusted")
        try:
            token, claims = self.issue(client, scopes)
        except Unauthenticated as exc:  # removed or changed since it authenticated
            return oauth_error("invalid_client", exc.message)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.ttl,
                "scope": claims["scope"]}
        return 200, body, dict(_JSON_HEADERS)

    def _trusted(self, key: bytes) -> bool:
        """Trusted now, or since enrolled (as ZAP looks: a key `agp keys new` enrolled
        after the last periodic refresh changes the trust directory's stat, and only then
        is it read again)."""
        assert self.trust is not None
        if self.trust.is_trusted(key):
            return True
        refresh = getattr(self.trust, "refresh_if_enrolled", None)
        if refresh is not None:
            refresh()
        return self.trust.is_trusted(key)

    # ---- tokens and keys ----------------------------------------------------------------

    def issue(self, client: Client,
              scopes: frozenset[str] | None = None) -> tuple[str, dict[str, Any]]:
        """Sign a token for an already authenticated client: (token, claims), with the roles
        and scopes the clients file grants it now. The mesh's own token service hands in a
        client it looked up in a registry it reloads only when a key is missing from it: a
        client demoted, removed or re-keyed since must not be signed for as it was."""
        self.registry.reload_if_changed()
        current = self.registry.get(client.client_id)
        if current is None or current.curve_public != client.curve_public:
            raise Unauthenticated(f"client {client.client_id!r} is no longer registered "
                                  "with this key")
        if GRANT_CLIENT_CREDENTIALS not in current.grant_types:
            raise Unauthenticated("this client may not use client_credentials")
        client, granted = current, current.scopes if scopes is None else scopes & current.scopes
        now = int(self._clock())
        claims = {"iss": self.issuer, "sub": client.client_id, "aud": self.audience,
                  "iat": now, "nbf": now, "exp": now + self.ttl,
                  "jti": jwt.b64url_encode(os.urandom(16)),
                  "scope": " ".join(sorted(granted)),
                  "roles": list(client.roles), "client_id": client.client_id,
                  "cnf": {jwt.CNF_CURVE: client.curve_public.decode()}}
        return self.keyring.sign(claims), claims

    def revoke(self, jti: str) -> None:
        """Refuse this token id from now on, for as long as any token may live: the id
        says nothing of its token's ``exp``, and a token signed before a restart with a
        shorter ``ttl`` may outlive ``now + ttl``."""
        self.revocations.revoke(jti, until=self._clock() + MAX_TTL + 2 * jwt.DEFAULT_LEEWAY)

    def is_revoked(self, jti: str) -> bool:
        return self.revocations.is_revoked(jti)

    def rotate_signing_key(self) -> str:
        return self.keyring.rotate()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.keyring.jwks()

    def verifier(self) -> TokenVerifier:
        """A verifier sharing this service's live keys and revocation list."""
        return TokenVerifier(self.keyring.key_set, issuer=self.issuer, audience=self.audience,
                             revocations=self.revocations)
