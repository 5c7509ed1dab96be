"""JSON Web Tokens (RFC 7519) signed with EdDSA / Ed25519 (RFC 8037), on PyNaCl alone.

Only one algorithm exists here, so there is no algorithm confusion to get wrong: the header's
``alg`` must be exactly ``"EdDSA"`` (``none``, ``HS256`` and friends are refused before any
key is touched). Parsing is strict and bounded: an 8 KiB cap, canonical unpadded base64url,
JSON objects without duplicate names or NaN, and the payload is parsed only after its
signature checks out. Every refusal is a :class:`TokenError` (an ``Unauthenticated``) whose
``reason`` is one of the ``REASON_*`` strings below.

Proof of possession: a token carries ``"cnf": {"curve": "<z85 CURVE public key>"}`` (RFC 7800
confirmation, with a member for the key ZAP authenticates), and :func:`check_binding`
compares it with the connection's ``User-Id``, so a stolen token is useless without the
matching secret key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final, Union

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from mesh.errors import ConfigError, Unauthenticated

from .keys import normalize_key

__all__ = [
    "ALG",
    "CNF_CURVE",
    "MAX_TOKEN_BYTES",
    "KeySet",
    "TokenError",
    "b64url_decode",
    "b64url_encode",
    "check_binding",
    "decode_unverified",
    "encode",
    "jwk",
    "thumbprint",
    "verify",
]

ALG: Final = "EdDSA"
CNF_CURVE: Final = "curve"
MAX_TOKEN_BYTES: Final = 8 * 1024
DEFAULT_LEEWAY: Final = 30.0
REQUIRED_CLAIMS: Final = ("iss", "sub", "aud", "exp", "iat", "jti")

REASON_TOO_LARGE: Final = "too_large"
REASON_MALFORMED: Final = "malformed"
REASON_BAD_ALG: Final = "bad_alg"
REASON_UNKNOWN_KID: Final = "unknown_kid"
REASON_BAD_SIGNATURE: Final = "bad_signature"
REASON_EXPIRED: Final = "expired"
REASON_NOT_YET_VALID: Final = "not_yet_valid"
REASON_WRONG_AUDIENCE: Final = "wrong_audience"
REASON_WRONG_ISSUER: Final = "wrong_issuer"
REASON_MISSING_CLAIM: Final = "missing_claim"
REASON_BAD_CLAIM: Final = "bad_claim"
REASON_BINDING_MISMATCH: Final = "binding_mismatch"
REASON_REVOKED: Final = "revoked"

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_ACCEPTED_TYP: Final = frozenset({"jwt", "at+jwt"})


class TokenError(Unauthenticated):
    """A token was refused; ``reason`` says why in one machine-readable word."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"token refused ({reason}){': ' + message if message else ''}",
                         details={"reason": reason})
        self.reason = reason


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; non-canonical encodings are refused."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(REASON_MALFORMED, "bad base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(REASON_MALFORMED, "bad base64url") from None
    if b64url_encode(data) != text:
        raise TokenError(REASON_MALFORMED, "non-canonical base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate member {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise TokenError(REASON_MALFORMED, f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise TokenError(REASON_MALFORMED, f"{what} is not a JSON object")
    return obj


def _compact_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode(claims: Mapping[str, Any], signing_key: SigningKey, kid: str) -> str:
    """Sign ``claims`` into a compact JWS with ``{"alg":"EdDSA","typ":"JWT","kid":kid}``."""
    header = {"alg": ALG, "typ": "JWT", "kid": kid}
    signing_input = (b64url_encode(_compact_json(header)) + "."
                     + b64url_encode(_compact_json(claims))).encode("ascii")
    token = signing_input + b"." + b64url_encode(signing_key.sign(signing_input).signature).encode()
    if len(token) > MAX_TOKEN_BYTES:
        raise ConfigError(f"token would be {len(token)} bytes, over {MAX_TOKEN_BYTES}")
    return token.decode("ascii")


def thumbprint(verify_key: VerifyKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256): a stable default ``kid``."""
    canonical = _compact_json({"crv": "Ed25519", "kty": "OKP",
                               "x": b64url_encode(bytes(verify_key))})
    return b64url_encode(hashlib.sha256(canonical).digest())


def jwk(verify_key: VerifyKey, kid: str | None = None) -> dict[str, str]:
    """The public JWK (RFC 8037) of an Ed25519 verify key."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(bytes(verify_key)),
            "kid": kid or thumbprint(verify_key), "alg": ALG, "use": "sig"}


class KeySet:
    """Verify keys by ``kid``: what :func:`verify` looks keys up in."""

    def __init__(self, keys: Mapping[str, VerifyKey] | None = None) -> None:
        self._keys: dict[str, VerifyKey] = dict(keys or {})

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeySet:
        """Read a JWKS document; entries that are not Ed25519 signing keys are skipped."""
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(entries, list):
            raise ConfigError("JWKS must be an object with a 'keys' list")
        keys: dict[str, VerifyKey] = {}
        for e in entries:
            if not (isinstance(e, dict) and e.get("kty") == "OKP" and e.get("crv") == "Ed25519"
                    and e.get("use", "sig") == "sig" and e.get("alg", ALG) == ALG
                    and isinstance(e.get("kid"), str) and isinstance(e.get("x"), str)):
                continue
            try:
                raw = b64url_decode(e["x"])
            except TokenError:
                continue
            if len(raw) == 32:
                keys[e["kid"]] = VerifyKey(raw)
        return cls(keys)

    def add(self, kid: str, key: VerifyKey) -> None:
        self._keys[kid] = key

    def get(self, kid: str) -> VerifyKey | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return list(self._keys)

    def to_jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [jwk(k, kid) for kid, k in self._keys.items()]}


KeysLike = Union[KeySet, VerifyKey, Mapping[str, Any]]


def _key_for(keys: KeysLike, kid: Any) -> VerifyKey:
    if isinstance(keys, VerifyKey):
        return keys
    if not isinstance(keys, KeySet):
        keys = KeySet.from_jwks(keys) if "keys" in keys else KeySet(keys)
    if not isinstance(kid, str):
        raise TokenError(REASON_UNKNOWN_KID, "no kid in header")
    found = keys.get(kid)
    if found is None:
        raise TokenError(REASON_UNKNOWN_KID, f"unknown kid {kid[:64]!r}")
    return found


def _split(token: str | bytes) -> tuple[bytes, str, str, str]:
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError(REASON_TOO_LARGE, f"over {MAX_TOKEN_BYTES} bytes")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise TokenError(REASON_MALFORMED, "not ASCII") from None
    if not isinstance(token, str):
        raise TokenError(REASON_MALFORMED, "token must be text")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(REASON_TOO_LARGE, f"over {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenError(REASON_MALFORMED, "not a compact JWS")
    h, p, s = parts
    return f"{h}.{p}".encode("ascii", "replace"), h, p, s


def decode_unverified(token: str | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) WITHOUT checking anything: for logs and debugging only."""
    _, h, p, _ = _split(token)
    return _json_object(b64url_decode(h), "header"), _json_object(b64url_decode(p), "payload")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(REASON_BAD_CLAIM, f"{name} must be a number")
    return float(value)


def verify(
    token: str | bytes,
    keys: KeysLike,
    *,
    issuer: str,
    audience: str,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
    required: tuple[str, ...] = REQUIRED_CLAIMS,
) -> dict[str, Any]:
    """Check ``token`` completely and return its claims; raise :class:`TokenError` otherwise."""
    signing_input, h, p, s = _split(token)
    header = _json_object(b64url_decode(h), "header")
    if header.get("alg") != ALG:
        raise TokenError(REASON_BAD_ALG, f"alg must be {ALG!r}")
    if "crit" in header:
        raise TokenError(REASON_MALFORMED, "crit header parameters are not supported")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise TokenError(REASON_MALFORMED, "typ must be JWT")
    key = _key_for(keys, header.get("kid"))
    signature = b64url_decode(s)
    if len(signature) != 64:
        raise TokenError(REASON_BAD_SIGNATURE, "signature must be 64 bytes")
    try:
        key.verify(signing_input, signature)
    except BadSignatureError:
        raise TokenError(REASON_BAD_SIGNATURE) from None
    claims = _json_object(b64url_decode(p), "payload")
    _check_claims(claims, issuer=issuer, audience=audience,
                  now=time.time() if now is None else now, leeway=leeway, required=required)
    return claims


def _check_claims(claims: dict[str, Any], *, issuer: str, audience: str, now: float,
                  leeway: float, required: tuple[str, ...]) -> None:
    for name in required:
        if name not in claims:
            raise TokenError(REASON_MISSING_CLAIM, name)
    for name in ("iss", "sub", "jti", "scope"):
        if name in claims and not isinstance(claims[name], str):
            raise TokenError(REASON_BAD_CLAIM, f"{name} must be a string")
    exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
    if exp is not None and now - leeway >= exp:
        raise TokenError(REASON_EXPIRED)
    if nbf is not None and now + leeway < nbf:
        raise TokenError(REASON_NOT_YET_VALID, "nbf is in the future")
    if iat is not None and now + leeway < iat:
        raise TokenError(REASON_NOT_YET_VALID, "iat is in the future")
    if claims.get("iss") != issuer:
        raise TokenError(REASON_WRONG_ISSUER)
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
        raise TokenError(REASON_BAD_CLAIM, "aud must be a string or a list of strings")
    if audience not in auds:
        raise TokenError(REASON_WRONG_AUDIENCE)
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError(REASON_BAD_CLAIM, "roles must be a list of strings")
    if "cnf" in claims and not isinstance(claims["cnf"], dict):
        raise TokenError(REASON_BAD_CLAIM, "cnf must be an object")


def check_binding(claims: Mapping[str, Any], connection_key: bytes | str) -> None:
    """Refuse unless the token's ``cnf.curve`` key is the connection's CURVE key."""
    cnf = claims.get("cnf")
    bound = cnf.get(CNF_CURVE) if isinstance(cnf, Mapping) else None
    if not isinstance(bound, str):
        raise TokenError(REASON_BINDING_MISMATCH, "token is not bound to a CURVE key")
    try:
        a, b = normalize_key(bound), normalize_key(connection_key)
    except ConfigError:
        raise TokenError(REASON_BINDING_MISMATCH, "bad key in binding") from None
    if not hmac.compare_digest(a, b):
        raise TokenError(REASON_BINDING_MISMATCH, "token is bound to another key")
