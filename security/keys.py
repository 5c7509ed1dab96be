"""Curve25519 identity keys: the backend of ``agp keys new NAME``.

One keypair per process serves both CURVE (transport, like mTLS) and NaCl Box (end to end):
the z85 text that CURVE uses decodes to the raw 32-byte Curve25519 key that PyNaCl uses.
Files are written in the exact format :func:`zmq.auth.load_certificate` reads (``NAME.key``
holds the public key, ``NAME.key_secret`` both), mode 0600, in a 0700 directory, and
written atomically so a reader never sees half a key. A secret file that group or others
can read is refused on load, as ssh does: a leaked identity key is the whole security model.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
from nacl.public import PrivateKey, PublicKey
from zmq.utils import z85

from mesh.errors import ConfigError

__all__ = [
    "KeyPair",
    "default_keys_dir",
    "file_signature",
    "generate",
    "load_keypair",
    "load_public",
    "new_keys",
    "normalize_key",
    "raw_key",
    "read_certificate",
    "validate_name",
    "write_certificate",
]

Z85_KEY_LEN: Final = 40
RAW_KEY_LEN: Final = 32
MAX_CERT_BYTES: Final = 4096
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_PUBLIC_BANNER: Final = (
    "#   ****  Generated on {0} by agp-mesh  ****\n"
    "#   ZeroMQ CURVE Public Certificate\n"
    "#   Exchange securely, or use a secure mechanism to verify the contents\n"
    "#   of this file after exchange.\n\n"
)
_PRIVATE_BANNER: Final = (
    "#   ****  Generated on {0} by agp-mesh  ****\n"
    "#   ZeroMQ CURVE **Secret** Certificate\n"
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
)


def normalize_key(key: bytes | str) -> bytes:
    """Return the canonical z85 form (40 bytes) of a public or secret key.

    Accepts z85 text (str or bytes, 40 characters) or the raw 32-byte key, so every caller
    compares keys in one form; anything else is a :class:`ConfigError`.
    """
    if isinstance(key, str):
        try:
            key = key.encode("ascii")
        except UnicodeEncodeError:
            raise ConfigError("key is not z85 text") from None
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise ConfigError(f"key must be bytes or str, not {type(key).__name__}")
    key = bytes(key)
    if len(key) == RAW_KEY_LEN:
        return z85.encode(key)
    if len(key) != Z85_KEY_LEN:
        raise ConfigError(f"key must be 40 z85 characters or 32 raw bytes, not {len(key)} bytes")
    try:
        raw = z85.decode(key)
    except (KeyError, ValueError, struct.error):
        raise ConfigError("key is not valid z85") from None
    if z85.encode(raw) != key:  # values past 2**32 wrap: refuse non-canonical text
        raise ConfigError("key is not canonical z85")
    return key


def raw_key(key: bytes | str) -> bytes:
    """The raw 32-byte form of a z85 or raw key (what PyNaCl wants). Cached: pyzmq's z85
    is pure Python (~25 us a key) and end-to-end sealing asks for the same few keys on
    every message."""
    if isinstance(key, (bytes, str)):
        return _raw_key_cached(key)
    return z85.decode(normalize_key(key))


@functools.lru_cache(maxsize=4096)
def _raw_key_cached(key: bytes | str) -> bytes:
    return z85.decode(normalize_key(key))


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 keypair in z85 text; ``*_raw`` give the 32-byte forms for PyNaCl."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        public, secret = normalize_key(self.public), normalize_key(self.secret)
        if zmq.curve_public(secret) != public:
            raise ConfigError("public key does not belong to the secret key")
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", secret)

    @property
    def public_raw(self) -> bytes:
        return z85.decode(self.public)

    @property
    def secret_raw(self) -> bytes:
        return z85.decode(self.secret)

    def private_key(self) -> PrivateKey:
        """The PyNaCl private key (for Box)."""
        return PrivateKey(self.secret_raw)

    def public_key(self) -> PublicKey:
        return PublicKey(self.public_raw)

    def __repr__(self) -> str:  # never print the secret in logs or tracebacks
        return f"KeyPair(public={self.public.decode()!r})"


def generate() -> KeyPair:
    """A fresh keypair from libzmq's CSPRNG-backed curve_keypair."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def default_keys_dir() -> Path:
    """``$AGP_HOME/keys``, or ``~/.agp/keys`` when AGP_HOME is unset."""
    home = os.environ.get("AGP_HOME") or os.path.join("~", ".agp")
    return Path(home).expanduser() / "keys"


def validate_name(name: str) -> str:
    """Key names become file names: letters, digits, ``_ . -``; no path tricks."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid key name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _certificate_text(public: bytes, secret: bytes | None, name: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    banner = (_PRIVATE_BANNER if secret else _PUBLIC_BANNER).format(now)
    lines = [banner, "metadata\n", f'    name = "{name}"\n', "curve\n",
             f'    public-key = "{public.decode()}"\n']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"\n')
    return "".join(lines)


def _atomic_write(path: Path, text: str, *, overwrite: bool) -> None:
    """Write via a 0600 temp file then link/rename, so readers see all or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no silent overwrite
            except FileExistsError:
                raise ConfigError(f"{path} already exists") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_certificate(path: Path, public: bytes, secret: bytes | None = None, *,
                      name: str = "", overwrite: bool = False) -> None:
    """Write one zmq-format certificate file (public only when ``secret`` is None)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = _certificate_text(normalize_key(public), normalize_key(secret) if secret else None,
                             name or path.stem)
    _atomic_write(path, text, overwrite=overwrite)


def read_certificate(path: Path, *, check_mode: bool = True) -> tuple[bytes, bytes | None, str]:
    """Parse a zmq-format certificate: ``(public_z85, secret_z85 or None, name)``.

    Accepts the files pyzmq's ``create_certificates`` writes too. Caps the size and checks
    that the secret, when present, matches the public key and is not group/other readable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_CERT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_CERT_BYTES:
        raise ConfigError(f"key file {path} is larger than {MAX_CERT_BYTES} bytes")
    fields: dict[bytes, bytes] = {}
    for raw_line in data.splitlines():
        line = raw_line.strip()
        if line.startswith(b"#") or b"=" not in line:
            continue
        field, value = line.split(b"=", 1)
        fields.setdefault(field.strip(), value.strip(b" \t'\""))
    if b"public-key" not in fields:
        raise ConfigError(f"no public key in {path}")
    public = normalize_key(fields[b"public-key"])
    secret = fields.get(b"secret-key")
    if secret is not None:
        if check_mode and st.st_mode & 0o077:
            raise ConfigError(f"secret key file {path} is readable by others: chmod 600 it")
        secret = KeyPair(public, secret).secret  # checks that they belong together
    name = fields.get(b"name", path.stem.encode()).decode("utf-8", "replace")
    return public, secret, name


def _paths(name_or_path: str | Path, keys_dir: Path | None) -> tuple[Path, Path]:
    p = Path(name_or_path)
    if isinstance(name_or_path, Path) or os.sep in str(name_or_path) or p.suffix in (
        ".key", ".key_secret"
    ):
        base = p.with_suffix("") if p.suffix in (".key", ".key_secret") else p
        return base.with_name(base.name + ".key"), base.with_name(base.name + ".key_secret")
    directory = Path(keys_dir) if keys_dir is not None else default_keys_dir()
    base = directory / validate_name(str(name_or_path))
    return base.with_name(base.name + ".key"), base.with_name(base.name + ".key_secret")


def new_keys(name: str, keys_dir: Path | None = None, *, overwrite: bool = False) -> KeyPair:
    """Generate and store ``NAME.key`` / ``NAME.key_secret``; refuses to overwrite by default."""
    public_path, secret_path = _paths(validate_name(name), keys_dir)
    if not overwrite and (public_path.exists() or secret_path.exists()):
        raise ConfigError(f"keys {name!r} already exist in {public_path.parent}")
    pair = generate()
    public_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_certificate(secret_path, pair.public, pair.secret, name=name, overwrite=overwrite)
    write_certificate(public_path, pair.public, name=name, overwrite=overwrite)
    return pair


def load_keypair(name_or_path: str | Path, keys_dir: Path | None = None) -> KeyPair:
    """Load a keypair by name (from the keys dir) or by path to either of its files."""
    _, secret_path = _paths(name_or_path, keys_dir)
    public, secret, _ = read_certificate(secret_path)
    if secret is None:
        raise ConfigError(f"{secret_path} holds no secret key")
    return KeyPair(public, secret)


def load_public(name_or_path: str | Path, keys_dir: Path | None = None) -> bytes:
    """Load a peer's public key (z85) by name or path."""
    public_path, _ = _paths(name_or_path, keys_dir)
    return read_certificate(public_path, check_mode=False)[0]


def file_signature(path: str | Path) -> tuple[int, int, int] | None:
    """What changes when a file (or directory) is rewritten or replaced: mtime, size and
    inode; None when it is not there. The trust store, the policy and the OAuth2 clients
    reload on a change of it, and only then."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino

