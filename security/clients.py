"""The OAuth2 client registry: who may ask the token service for a token, and for what.

A client is a ``client_id``, a secret stored only as an scrypt hash, the CURVE public key its
tokens are bound to (``cnf``), and the roles and scopes an operator granted it: a client can
narrow its scope in a request, never widen it. :meth:`ClientRegistry.authenticate` spends the
same scrypt work whether or not the client exists, so timing does not reveal valid ids.

File format (``clients.json``, written 0600)::

    {"version": 1, "clients": [{"client_id": "analyst", "secret_hash": "scrypt$16384$8$1$..",
      "curve_public": "<z85>", "roles": ["analyst"], "scopes": ["mesh"],
      "grant_types": ["client_credentials"]}]}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from mesh.errors import ConfigError

from .keys import file_signature, normalize_key

__all__ = ["Client", "ClientRegistry", "check_secret", "hash_secret"]

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MAX_SCRYPT_N: Final = 2**20
MAX_SECRET_LEN: Final = 1024
GRANT_CLIENT_CREDENTIALS: Final = "client_credentials"
_CLIENT_ID_RE: Final = re.compile(r"[A-Za-z0-9_.\-@]{1,128}")
# RFC 6749 s3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        ni, ri, pi = int(n), int(r), int(p)
        salt_b, digest_b = base64.b64decode(salt, validate=True), base64.b64decode(
            digest, validate=True)
    except (ValueError, TypeError):
        raise ConfigError("malformed secret hash") from None
    if (scheme != "scrypt" or not 2 <= ni <= MAX_SCRYPT_N or ni & (ni - 1) or not 1 <= ri <= 32
            or not 1 <= pi <= 16 or len(salt_b) < 8 or len(digest_b) != 32):
        raise ConfigError("unsupported secret hash parameters")
    return ni, ri, pi, salt_b, digest_b


def check_secret(secret: str, encoded: str) -> bool:
    """Constant-time check of ``secret`` against an scrypt hash."""
    n, r, p, salt, digest = _parse_hash(encoded)
    candidate = hashlib.scrypt(secret.encode("utf-8", "replace"), salt=salt, n=n, r=r, p=p,
                               dklen=32)
    return hmac.compare_digest(candidate, digest)


@dataclass(frozen=True)
class Client:
    client_id: str
    secret_hash: str
    curve_public: bytes
    roles: tuple[str, ...] = ()
    scopes: frozenset[str] = field(default_factory=frozenset)
    grant_types: frozenset[str] = frozenset({GRANT_CLIENT_CREDENTIALS})

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not _CLIENT_ID_RE.fullmatch(self.client_id):
            raise ConfigError(f"invalid client_id {self.client_id!r}")
        _parse_hash(self.secret_hash)
        object.__setattr__(self, "curve_public", normalize_key(self.curve_public))
        object.__setattr__(self, "roles", tuple(str(r) for r in self.roles))
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        object.__setattr__(self, "grant_types", frozenset(self.grant_types))
        for s in self.scopes:
            if not SCOPE_TOKEN_RE.fullmatch(s):
                raise ConfigError(f"invalid scope {s!r}")

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "secret_hash": self.secret_hash,
                "curve_public": self.curve_public.decode(), "roles": list(self.roles),
                "scopes": sorted(self.scopes), "grant_types": sorted(self.grant_types)}


class ClientRegistry:
    """Registered clients by id; thread-safe for the threaded HTTP driver."""

    def __init__(self, clients: Iterable[Client] = (), *, scrypt_n: int = SCRYPT_N,
                 path: str | Path | None = None) -> None:
        self._clients: dict[str, Client] = {c.client_id: c for c in clients}
        self._lock = threading.Lock()
        self._scrypt_n = scrypt_n
        self._dummy_hash: str | None = None
        # the file these clients came from, and its signature then: lets a running token
        # endpoint pick up a client `agp keys new` wrote, without a restart
        self.path = Path(path) if path is not None else None
        self._sig = file_signature(self.path) if self.path is not None else None
        self.reloads = 0
        self.reload_errors = 0

    def register(self, client_id: str, secret: str, *, curve_public: bytes | str,
                 roles: Iterable[str] = (), scopes: Iterable[str] = (),
                 grant_types: Iterable[str] = (GRANT_CLIENT_CREDENTIALS,)) -> Client:
        """Add or replace a client; the secret is hashed here and never stored."""
        if not isinstance(secret, str) or not 16 <= len(secret) <= MAX_SECRET_LEN:
            raise ConfigError("client secret must be 16 to 1024 characters")
        client = Client(client_id, hash_secret(secret, n=self._scrypt_n),
                        normalize_key(curve_public), tuple(roles), frozenset(scopes),
                        frozenset(grant_types))
        with self._lock:
            self._clients[client_id] = client
        return client

    def update(self, client_id: str, *, roles: Iterable[str] | None = None,
               scopes: Iterable[str] | None = None,
               grant_types: Iterable[str] | None = None) -> Client:
        """Change a client's grants and keep its secret hash: re-enrolling an identity
        (``agp up`` does, on every start) must not void the secret its owner was shown."""
        with self._lock:
            old = self._clients.get(client_id)
            if old is None:
                raise ConfigError(f"no client {client_id!r}")
            new = replace(old, **{k: v for k, v in (("roles", roles), ("scopes", scopes),
                                                    ("grant_types", grant_types))
                                  if v is not None})
            self._clients[client_id] = new
        return new

    def remove(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def __len__(self) -> int:
        return len(self._clients)

    def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The client if ``secret`` is right; same work for unknown ids (no enumeration)."""
        client = self._clients.get(client_id)
        if client is None or len(secret) > MAX_SECRET_LEN:
            if self._dummy_hash is None:
                self._dummy_hash = hash_secret("not-a-real-secret", n=self._scrypt_n)
            check_secret(secret[:MAX_SECRET_LEN], self._dummy_hash)
            return None
        return client if check_secret(secret, client.secret_hash) else None

    def reload_if_changed(self) -> bool:
        """Reload from :attr:`path` if its signature (mtime, size, inode) changed since it
        was read; True if the clients were replaced. Keyed on the signature, so callers
        with a wrong secret cannot make an unchanged file be parsed again. A file that no
        longer loads keeps the clients held (counted in ``reload_errors``)."""
        if self.path is None:
            return False
        with self._lock:
            sig = file_signature(self.path)
            if sig == self._sig:
                return False
            self._sig = sig
            try:
                fresh = ClientRegistry.load(self.path)._clients if sig is not None else {}
            except ConfigError:
                self.reload_errors += 1
                return False
            self._clients = fresh
            self.reloads += 1
            return True

    @classmethod
    def load(cls, path: str | Path) -> ClientRegistry:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("version") != 1 or not isinstance(doc.get("clients"), list):
                raise ConfigError(f"{path}: expected version 1 and a 'clients' list")
            clients = [Client(c["client_id"], c["secret_hash"], c["curve_public"].encode(),
                              tuple(c.get("roles", ())), frozenset(c.get("scopes", ())),
                              frozenset(c.get("grant_types", (GRANT_CLIENT_CREDENTIALS,))))
                       for c in doc["clients"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cannot load clients from {path}: {exc}") from None
        return cls(clients, path=path)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        doc = {"version": 1, "clients": [c.to_json() for c in self._clients.values()]}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if self.path is not None and path == self.path:
            self._sig = file_signature(path)
