"""End-to-end sealing of request/reply/send/stream payloads with NaCl Box.

The router carries these payloads but holds no key that opens them.

Sessions. A :class:`Sealer` keeps one *session* per recipient: an ephemeral Curve25519
keypair ``e``, a random 16-byte nonce prefix and a 64-bit counter. Frames are sealed with
``Box(e_secret, recipient_static_public)``; the recipient derives the same key from
``Box(recipient_static_secret, e_public)``. Each Box is built once per session and cached
(building one costs ~30 us, sealing 100 B ~2 us). A session is rotated after
``max_messages`` frames or ``max_seconds``, and its ephemeral secret is then dropped, so a
later theft of the sender's static key does not open earlier traffic. (The recipient's
static key is still one half of every session key: forward secrecy against the theft of the
RECIPIENT's static key would need recipient-side ephemeral prekeys, which this does not do.)

Nonces are ``prefix(16) || counter(8, big-endian)``; a message of n frames uses n
consecutive counters, so no nonce ever repeats under one session key.

Sender authentication. Every sealed message carries ``session_pub`` and a 40-byte
``session_proof = created_ms(8) || BLAKE2b-256(key=K_ss, context || sender_pub ||
recipient_pub || session_pub || nonce_prefix || created_ms)`` where ``K_ss`` is the
static-static ``Box(sender_secret, recipient_public)`` key: only the holder of the sender's
long-term secret (or the recipient itself) can make it. The recipient checks it once per
session, then only that it did not change. Sender and recipient order in the MAC stops a
proof from being reflected back.

Replay. Per session the recipient keeps a :class:`~security.replay.ReplayWindow` (duplicates
and counters older than the window are refused with :class:`Replayed`) and refuses sessions
older than ``max_session_age`` (by ``created_ms``, i.e. the sender's clock, with
``clock_skew`` allowed for the future), which bounds the age of any message. Sessions evicted
for space are remembered until they would have expired; using one gives
:class:`~mesh.errors.UnknownSession`, after which the sender calls :meth:`Sealer.forget`.

Inside each frame's box a 20-byte header binds ``BLAKE2b-128(aad)`` and ``(index, count)``:
the caller's associated data (e.g. message id and destination) cannot be swapped, and frames
of a multi-frame payload cannot be reordered, dropped or moved between messages. Frames are
sealed one by one (no concatenation of large frames).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import nacl.bindings
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from mesh.errors import ConfigError, Malformed, Replayed, Unauthenticated, UnknownSession

from .keys import KeyPair, raw_key
from .replay import DEFAULT_WINDOW, MAX_COUNTER, ReplayWindow

__all__ = ["HEADER_LEN", "OpenError", "Opener", "SealedParts", "Sealer"]

PREFIX_LEN: Final = 16
NONCE_LEN: Final = 24
KEY_LEN: Final = 32
PROOF_LEN: Final = 40
HEADER_LEN: Final = NONCE_LEN + KEY_LEN + PROOF_LEN  # SealedParts.header()
INNER_LEN: Final = 20
MAX_FRAMES: Final = 65535
SESSION_MAX_MESSAGES: Final = 1 << 20
SESSION_MAX_SECONDS: Final = 300.0
MAX_SESSION_AGE: Final = 600.0
CLOCK_SKEW: Final = 60.0
MAX_PEERS: Final = 4096
_PROOF_CONTEXT: Final = b"agp-mesh e2e session v1"
_PROOF_PERSON: Final = b"agp-e2e-proof-v1"
_AAD_PERSON: Final = b"agp-e2e-aad-v1"
_INNER: Final = struct.Struct(">HH")
_U64: Final = struct.Struct(">Q")


class OpenError(Unauthenticated):
    """A sealed payload did not authenticate (tampered, wrong key, forged session)."""


def _aad_tag(aad: bytes) -> bytes:
    return hashlib.blake2b(aad, digest_size=16, person=_AAD_PERSON).digest()


_EMPTY_AAD_TAG: Final = _aad_tag(b"")


def _proof_mac(k_ss: bytes, sender: bytes, recipient: bytes, session_pub: bytes,
               prefix: bytes, created: bytes) -> bytes:
    data = b"".join((_PROOF_CONTEXT, sender, recipient, session_pub, prefix, created))
    return hashlib.blake2b(data, key=k_ss, digest_size=32, person=_PROOF_PERSON).digest()


@dataclass(frozen=True, slots=True)
class SealedParts:
    """What travels: ``header()`` (96 bytes, for the envelope) plus one ciphertext per frame."""

    nonce: bytes
    frames: tuple[bytes, ...]
    session_pub: bytes
    session_proof: bytes

    @property
    def ciphertext(self) -> bytes:
        if len(self.frames) != 1:
            raise Malformed(f"payload has {len(self.frames)} frames, not 1")
        return self.frames[0]

    def header(self) -> bytes:
        return self.nonce + self.session_pub + self.session_proof

    @classmethod
    def from_header(cls, header: bytes, frames: Sequence[bytes]) -> SealedParts:
        if len(header) != HEADER_LEN:
            raise Malformed(f"e2e header must be {HEADER_LEN} bytes")
        header = bytes(header)
        return cls(header[:NONCE_LEN], tuple(bytes(f) for f in frames),
                   header[NONCE_LEN:NONCE_LEN + KEY_LEN], header[NONCE_LEN + KEY_LEN:])


def _peer_raw(key: bytes) -> bytes:
    return bytes(key) if len(key) == KEY_LEN else raw_key(key)


class _StaticKeys:
    """Cached static-static Box keys, one per peer (bounded LRU)."""

    def __init__(self, private: PrivateKey, max_peers: int) -> None:
        self._private, self._max = private, max_peers
        self._keys: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()

    def get(self, peer: bytes) -> bytes:
        k = self._keys.get(peer)
        if k is None:
            k = Box(self._private, PublicKey(peer)).shared_key()
            if len(self._keys) >= self._max:
                self._keys.popitem(last=False)
            self._keys[peer] = k
        return k


class _SendSession:
    __slots__ = ("counter", "created", "key", "prefix", "proof", "pub")

    def __init__(self, key: bytes, pub: bytes, prefix: bytes, proof: bytes, created: float):
        self.key, self.pub, self.prefix, self.proof = key, pub, prefix, proof
        self.created, self.counter = created, 0


class Sealer:
    """Seal payloads to recipients' static public keys. One per thread or event loop."""

    def __init__(self, keypair: KeyPair, *, max_messages: int = SESSION_MAX_MESSAGES,
                 max_seconds: float = SESSION_MAX_SECONDS, max_peers: int = MAX_PEERS,
                 clock: Callable[[], float] = time.time) -> None:
        self._me = keypair.public_raw
        self._static = _StaticKeys(keypair.private_key(), max_peers)
        self.max_messages, self.max_seconds, self._clock = max_messages, max_seconds, clock
        self._sessions: collections.OrderedDict[bytes, _SendSession] = collections.OrderedDict()
        self._max_peers = max_peers

    def seal(self, recipient_public: bytes, plaintext: bytes | Sequence[bytes],
             aad: bytes = b"") -> SealedParts:
        """Seal one payload (bytes) or a multi-frame payload (a sequence of frames)."""
        frames = (plaintext,) if isinstance(plaintext, (bytes, bytearray, memoryview)) \
            else tuple(plaintext)
        n = len(frames)
        if not 1 <= n <= MAX_FRAMES:
            raise Malformed(f"a payload has 1 to {MAX_FRAMES} frames")
        recipient = _peer_raw(recipient_public)
        session = self._session(recipient, n)
        first = session.counter
        session.counter += n
        tag = _EMPTY_AAD_TAG if not aad else _aad_tag(aad)
        prefix, key = session.prefix, session.key
        seal = nacl.bindings.crypto_box_easy_afternm
        out = tuple(seal(tag + _INNER.pack(i, n) + frame, prefix + _U64.pack(first + i), key)
                    for i, frame in enumerate(frames))
        return SealedParts(prefix + _U64.pack(first), out, session.pub, session.proof)

    def forget(self, recipient_public: bytes) -> None:
        """Drop the session to this recipient (after it answered UNKNOWN_SESSION)."""
        self._sessions.pop(_peer_raw(recipient_public), None)

    def _session(self, recipient: bytes, n: int) -> _SendSession:
        s = self._sessions.get(recipient)
        now = self._clock()
        if s is None or s.counter + n > self.max_messages or now - s.created >= self.max_seconds:
            s = self._new_session(recipient, now)
            self._sessions[recipient] = s
            if len(self._sessions) > self._max_peers:
                self._sessions.popitem(last=False)
        return s

    def _new_session(self, recipient: bytes, now: float) -> _SendSession:
        eph = PrivateKey.generate()
        try:
            key = Box(eph, PublicKey(recipient)).shared_key()
            k_ss = self._static.get(recipient)
        except (CryptoError, ValueError, TypeError) as exc:
            raise ConfigError(f"unusable recipient key: {exc}") from None
        pub, prefix = bytes(eph.public_key), os.urandom(PREFIX_LEN)
        created = _U64.pack(int(now * 1000))
        proof = created + _proof_mac(k_ss, self._me, recipient, pub, prefix, created)
        return _SendSession(key, pub, prefix, proof, now)


class _RecvSession:
    __slots__ = ("created", "key", "prefix", "proof", "sender", "window")

    def __init__(self, sender: bytes, key: bytes, prefix: bytes, proof: bytes, created: float,
                 window: int) -> None:
        self.sender, self.key, self.prefix, self.proof = sender, key, prefix, proof
        self.created, self.window = created, ReplayWindow(window)


class Opener:
    """Open payloads sealed to our static key, refusing forgeries and replays. One per
    thread or event loop (the session table and replay windows are not locked)."""

    def __init__(self, keypair: KeyPair, *, max_session_age: float = MAX_SESSION_AGE,
                 clock_skew: float = CLOCK_SKEW, max_sessions: int = MAX_PEERS,
                 window: int = DEFAULT_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self._me = keypair.public_raw
        self._private = keypair.private_key()
        self._static = _StaticKeys(self._private, max_sessions)
        self.max_session_age, self.clock_skew = max_session_age, clock_skew
        self._max_sessions, self._window, self._clock = max_sessions, window, clock
        self._sessions: collections.OrderedDict[bytes, _RecvSession] = collections.OrderedDict()
        self._evicted: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def open(self, sender_public: bytes, parts: SealedParts, aad: bytes = b"") -> bytes:
        """The plaintext of a one-frame payload."""
        if len(parts.frames) != 1:
            raise Malformed(f"payload has {len(parts.frames)} frames, not 1")
        return self.open_frames(sender_public, parts, aad)[0]

    def open_frames(self, sender_public: bytes, parts: SealedParts,
                    aad: bytes = b"") -> list[bytes]:
        """The plaintext frames; raises OpenError, Replayed, UnknownSession or Malformed."""
        nonce, frames = parts.nonce, parts.frames
        if (len(nonce) != NONCE_LEN or len(parts.session_pub) != KEY_LEN
                or len(parts.session_proof) != PROOF_LEN or not 1 <= len(frames) <= MAX_FRAMES):
            raise Malformed("malformed sealed payload")
        try:
            sender = _peer_raw(sender_public)
        except ConfigError:
            raise Malformed("malformed sender key") from None
        now = self._clock()
        session = self._sessions.get(parts.session_pub)
        fresh = session is None
        if session is None:
            session = self._verify_session(sender, parts, now)
        elif not (hmac.compare_digest(session.sender, sender)
                  and session.prefix == nonce[:PREFIX_LEN]
                  and session.proof == parts.session_proof):
            raise OpenError("session does not match its sender, nonce prefix or proof")
        if now - session.created > self.max_session_age:
            raise Replayed("session older than the maximum age")
        n = len(frames)
        first = _U64.unpack_from(nonce, PREFIX_LEN)[0]
        if first + n - 1 > MAX_COUNTER:
            raise Malformed("counter out of range")
        tag = _EMPTY_AAD_TAG if not aad else _aad_tag(aad)
        prefix, key = session.prefix, session.key
        open_ = nacl.bindings.crypto_box_open_easy_afternm
        out = []
        for i, ct in enumerate(frames):
            try:
                pt = open_(bytes(ct), prefix + _U64.pack(first + i), key)
            except (CryptoError, ValueError, TypeError):
                raise OpenError("payload did not authenticate") from None
            if len(pt) < INNER_LEN or not hmac.compare_digest(pt[:16], tag) \
                    or _INNER.unpack_from(pt, 16) != (i, n):
                raise OpenError("associated data or frame order mismatch")
            out.append(pt[INNER_LEN:])
        # authentic: now a duplicate is a replay (checked after, so tampering reads as such)
        session.window.check(first, n)
        if fresh:
            self._store(parts.session_pub, session)
        else:
            self._sessions.move_to_end(parts.session_pub)
        session.window.commit(first, n)
        return out

    def _verify_session(self, sender: bytes, parts: SealedParts, now: float) -> _RecvSession:
        if parts.session_pub in self._evicted:
            raise UnknownSession("e2e session forgotten; the sender must start a new one")
        created_b = parts.session_proof[:8]
        prefix = parts.nonce[:PREFIX_LEN]
        try:
            k_ss = self._static.get(sender)
        except (CryptoError, ValueError, TypeError):
            raise OpenError("unusable sender key") from None
        mac = _proof_mac(k_ss, sender, self._me, parts.session_pub, prefix, created_b)
        if not hmac.compare_digest(mac, parts.session_proof[8:]):
            raise OpenError("session proof does not authenticate the sender")
        created = _U64.unpack(created_b)[0] / 1000.0
        if created > now + self.clock_skew:
            raise OpenError("session created in the future")
        try:
            key = Box(self._private, PublicKey(parts.session_pub)).shared_key()
        except (CryptoError, ValueError, TypeError):
            raise OpenError("unusable session key") from None
        return _RecvSession(sender, key, prefix, bytes(parts.session_proof), created,
                            self._window)

    def _store(self, session_pub: bytes, session: _RecvSession) -> None:
        self._sessions[session_pub] = session
        if len(self._sessions) <= self._max_sessions:
            return
        old_pub, old = self._sessions.popitem(last=False)
        # remember it until it would be too old anyway, so its messages cannot be replayed
        self._evicted[old_pub] = old.created + self.max_session_age
        now = self._clock()
        while self._evicted and next(iter(self._evicted.values())) < now:
            self._evicted.popitem(last=False)
        while len(self._evicted) > 16 * self._max_sessions:  # hard bound on memory
            self._evicted.popitem(last=False)
