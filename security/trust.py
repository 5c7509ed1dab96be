"""The trust store: which CURVE public keys may connect, and which never again.

Layout of the store directory (every file written atomically, mode 0600, dir 0700)::

    trusted/NAME.key   one zmq-format public certificate per enrolled identity
                       (so ``zmq.auth.load_certificates(dir/"trusted")`` reads it too)
    revoked.json       {"version": 1, "revoked": [{"key", "name", "at", "reason"}, ...]}

Revocation beats enrollment: a revoked key stays refused even if its certificate file is
copied back into ``trusted/``, and :meth:`TrustStore.enroll` refuses it with
:class:`RevokedKey`, so a stolen key cannot be re-used silently. Lookups read an immutable
snapshot that :meth:`TrustStore.refresh` swaps in one assignment, so the ZAP thread can call
:meth:`is_trusted` while another thread refreshes. Writers in several processes (the CLI and
a running router) serialize on an ``flock`` of ``.lock``.

A revocation written by another process (`agp keys revoke`) must hold from the next
handshake or token on, not from a reader's next periodic :meth:`~TrustStore.refresh`:
:meth:`TrustStore.refresh_if_revoked` is one stat of ``revoked.json`` (replaced whole on every
change), and reads the store again only when it differs from the one the snapshot was read
with. Refreshes are serialized in-process, so the last snapshot swapped in is never older
than one an earlier refresh read.

A revocation is for good (there is no un-revoke): a process keeps every key it has seen
revoked even if ``revoked.json`` is then deleted or edited to drop it (logged as an error),
and its next :meth:`TrustStore.revoke` writes them back. A damaged file keeps the previous
snapshot; at start a damaged file is an error, a missing one an empty list.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mesh.errors import ConfigError, Forbidden

from .keys import (
    file_signature,
    normalize_key,
    read_certificate,
    validate_name,
    write_certificate,
)

__all__ = ["Revocation", "RevokedKey", "TrustStore", "TrustedKey", "UnknownKey"]

log = logging.getLogger("agp.security.trust")

MAX_REVOKED_BYTES: Final = 4 * 1024 * 1024


class RevokedKey(Forbidden):
    """The key is on the revocation list; it cannot be enrolled or used again."""


class UnknownKey(ConfigError, LookupError):
    """No enrolled identity has this name or key."""


@dataclass(frozen=True)
class TrustedKey:
    name: str
    public: bytes


@dataclass(frozen=True)
class Revocation:
    public: bytes
    name: str
    at: str
    reason: str = ""


@dataclass(frozen=True)
class _Snapshot:
    trusted: dict[bytes, str] = field(default_factory=dict)
    revoked: dict[bytes, Revocation] = field(default_factory=dict)
    signature: tuple[Any, ...] = ()
    revoked_file: Any = None  # revoked.json's file_signature, taken before it was read


def _as_z85(key: bytes | str) -> bytes | None:
    """Cheap key normalization for the hot lookup path; junk gives None, never raises."""
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if len(key) == 40:
        return bytes(key)
    try:
        return normalize_key(key)
    except ConfigError:
        return None


class TrustStore:
    """Enrolled and revoked CURVE public keys, kept in a directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._trusted_dir = self.directory / "trusted"
        self.revoked_path = self.directory / "revoked.json"  # replaced whole on every change
        self._trusted_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._snap = _Snapshot()
        self._dir_sig: Any = None  # the trusted directory's stat at the last full look
        self._bad_revoked: Any = None  # a damaged revoked.json's stat: not read again
        self._refreshing = threading.Lock()
        self.refresh()

    # ---- lookups (any thread) -------------------------------------------------------------

    def is_trusted(self, key: bytes | str) -> bool:
        """True when ``key`` (z85 or raw) is enrolled and not revoked."""
        z = _as_z85(key)
        return z is not None and z in self._snap.trusted

    def is_revoked(self, key: bytes | str) -> bool:
        z = _as_z85(key)
        return z is not None and z in self._snap.revoked

    def name_of(self, key: bytes | str) -> str | None:
        z = _as_z85(key)
        return None if z is None else self._snap.trusted.get(z)

    def list(self) -> builtins.list[TrustedKey]:
        """Enrolled, non-revoked identities, sorted by name."""
        return sorted((TrustedKey(n, k) for k, n in self._snap.trusted.items()),
                      key=lambda t: t.name)

    def revoked(self) -> builtins.list[Revocation]:
        return sorted(self._snap.revoked.values(), key=lambda r: r.at)

    # ---- changes ------------------------------------------------------------------------

    def enroll(self, name: str, public_key: bytes | str) -> bytes:
        """Trust ``public_key`` under ``name``; returns the z85 key. Idempotent for equal pairs."""
        validate_name(name)
        key = normalize_key(public_key)
        with self._locked():
            self.refresh()
            snap = self._snap
            if key in snap.revoked:
                raise RevokedKey(f"key of {snap.revoked[key].name!r} was revoked; make a new key")
            if snap.trusted.get(key) == name:
                return key
            if key in snap.trusted:
                raise ConfigError(f"key already enrolled as {snap.trusted[key]!r}")
            if name in snap.trusted.values():
                raise ConfigError(f"name {name!r} is enrolled with another key; revoke it first")
            write_certificate(self._trusted_dir / f"{name}.key", key, name=name)
            self.refresh()
        log.info("enrolled %s %s", name, key.decode())
        return key

    def revoke(self, name_or_key: str | bytes, *, reason: str = "") -> bytes:
        """Revoke by enrolled name or by key (a key need not be enrolled: pre-emptive)."""
        with self._locked():
            self.refresh()
            key, name = self._resolve(name_or_key)
            on_file = {e.public for e in self._read_revoked_file()}  # (damaged: raises)
            # the snapshot: the file's revocations and those it lost (deleted, edited), which
            # go back with this one: the file is again the whole list
            revoked = dict(self._snap.revoked)
            if key not in revoked:
                at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                revoked[key] = Revocation(key, name, at, reason)
            if revoked.keys() != on_file:
                # revoke first: a crash leaves it revoked
                self._write_revoked_file(list(revoked.values()))
            for path in self._trusted_dir.glob("*.key"):
                with contextlib.suppress(ConfigError):
                    if read_certificate(path, check_mode=False)[0] == key:
                        path.unlink(missing_ok=True)
            self.refresh()
        log.warning("revoked %s %s %s", name, key.decode(), reason)
        return key

    def refresh(self) -> frozenset[bytes]:
        """Reload if anything changed on disk; returns keys that lost trust (drop their
        sessions: ZAP only runs at handshake, so live connections need the caller's help)."""
        with self._refreshing:  # (ZAP, the heartbeat, HTTP threads: none swaps in older)
            return self._refresh()

    def refresh_if_revoked(self) -> None:
        """The look a handshake or a token takes: one stat of the revocation file, and a
        refresh only when it is not the file the snapshot was read from (a revocation by
        another process holds from now on, not from the next periodic refresh)."""
        sig = file_signature(self.revoked_path)
        if sig != self._snap.revoked_file and sig != self._bad_revoked:
            self.refresh()

    def revoked_now(self, key: bytes | str) -> bool:
        """:meth:`is_revoked` as the revocation file is now (a handshake, HELLO or token
        asks this; the per-session checks between heartbeats read the snapshot)."""
        self.refresh_if_revoked()
        return self.is_revoked(key)

    def _refresh(self) -> frozenset[bytes]:
        self._dir_sig = self._trusted_dir_stat()
        revoked_file = file_signature(self.revoked_path)  # before reading: never newer
        sig = self._signature()
        old = self._snap
        if sig == old.signature:
            return frozenset()
        try:
            revoked = {r.public: r for r in self._read_revoked_file()}
        except ConfigError as exc:
            if not old.signature:
                raise  # at start: refuse to run without a readable revocation list
            self._bad_revoked = revoked_file  # one log line, not one per handshake
            log.error("keeping the previous trust snapshot: %s", exc.message)
            return frozenset()
        lost = old.revoked.keys() - revoked.keys()
        if lost:  # a revocation is for good: an edited or deleted file does not undo it
            log.error("%s lacks %d key(s) this process saw revoked; they stay revoked",
                      self.revoked_path, len(lost))
            for key in lost:
                revoked[key] = old.revoked[key]
        trusted: dict[bytes, str] = {}
        for path in sorted(self._trusted_dir.glob("*.key")):
            try:
                key, _, name = read_certificate(path, check_mode=False)
            except ConfigError as exc:
                log.warning("skipping unreadable trusted key %s: %s", path, exc.message)
                continue
            if key in revoked:
                log.warning("refusing revoked key %s found in %s", key.decode(), path)
            elif key not in trusted:
                trusted[key] = name
        self._snap = _Snapshot(trusted, revoked, sig, revoked_file)
        return frozenset(old.trusted.keys() - trusted.keys())

    # ---- internals ----------------------------------------------------------------------

    def _resolve(self, name_or_key: str | bytes) -> tuple[bytes, str]:
        trusted = self._snap.trusted
        if isinstance(name_or_key, str) and name_or_key in trusted.values():
            key = next(k for k, n in trusted.items() if n == name_or_key)
            return key, name_or_key
        try:
            key = normalize_key(name_or_key)
        except ConfigError:
            raise UnknownKey(f"no enrolled identity named {name_or_key!r}") from None
        return key, trusted.get(key, "")

    def refresh_if_enrolled(self) -> None:
        """The look a handshake by an unknown key takes: enrolling a key adds a file to the
        trusted directory, which changes its stat; only then is every file read again (an
        unknown key must not cost a scan of them all: anyone may present one)."""
        if self._trusted_dir_stat() != self._dir_sig:
            self.refresh()

    def _trusted_dir_stat(self) -> Any:
        return file_signature(self._trusted_dir)

    def _signature(self) -> tuple[Any, ...]:
        parts: builtins.list[Any] = []
        for path in (self._trusted_dir, self.revoked_path):
            try:
                st = path.stat()
                parts.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                parts.append(None)
        with os.scandir(self._trusted_dir) as it:  # catches in-place edits of a file
            for entry in it:
                if entry.name.endswith(".key"):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        parts.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        parts.sort(key=repr)
        return tuple(parts)

    def _read_revoked_file(self) -> builtins.list[Revocation]:
        try:
            with open(self.revoked_path, "rb") as f:
                data = f.read(MAX_REVOKED_BYTES + 1)
        except FileNotFoundError:
            return []
        if len(data) > MAX_REVOKED_BYTES:
            raise ConfigError(f"{self.revoked_path} is too large")
        try:
            doc = json.loads(data)
            out = []
            for e in doc["revoked"]:
                out.append(Revocation(normalize_key(e["key"]), str(e.get("name", "")),
                                      str(e.get("at", "")), str(e.get("reason", ""))))
            return out
        except (ValueError, KeyError, TypeError) as exc:
            # fail closed: a damaged revocation list must not silently un-revoke keys
            raise ConfigError(f"{self.revoked_path} is invalid: {exc}") from None

    def _write_revoked_file(self, entries: builtins.list[Revocation]) -> None:
        doc = {"version": 1, "revoked": [
            {"key": e.public.decode(), "name": e.name, "at": e.at, "reason": e.reason}
            for e in entries]}
        fd, tmp = tempfile.mkstemp(prefix=".revoked.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.revoked_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
