"""End-to-end sealing of request/reply/send/stream payloads: X25519 sessions, AEGIS-256.

The router carries these payloads but holds no key that opens them.

Sessions. A :class:`Sealer` keeps one *session* per recipient: an ephemeral Curve25519
keypair ``e``, a random 16-byte nonce prefix and a 64-bit counter. The session key is NaCl's
``Box(e_secret, recipient_static_public).shared_key()`` (X25519 then HSalsa20); the recipient
derives the same key from ``Box(recipient_static_secret, e_public)``. It is computed once per
session (~30 us); each frame is then one AEGIS-256 call (``security.aead``, ~0.5 us for a
small payload). A session is rotated after
``max_messages`` frames or ``max_seconds``, and its ephemeral secret is then dropped, so a
later theft of the sender's static key does not open earlier traffic. (The recipient's
static key is still one half of every session key: forward secrecy against the theft of the
RECIPIENT's static key would need recipient-side ephemeral prekeys, which this does not do.)

Nonces are ``prefix(16) || counter(8, big-endian)`` (24 bytes on the wire; AEGIS-256 takes
them padded with 8 zero bytes); a message of n frames uses n consecutive counters, so no
nonce ever repeats under one session key.

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

Each frame's associated data is the caller's ``aad`` followed by ``(index, count)``: the
caller's binding (e.g. action and message id) cannot be swapped, and frames of a multi-frame
payload cannot be reordered, dropped or moved between messages. Frames are sealed one by one
(no concatenation of large frames); each grows by AEGIS-256's 32-byte tag.
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
from typing import Any, Final

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from mesh.errors import ConfigError, Malformed, Replayed, Unauthenticated, UnknownSession

from . import aead
from .keys import KeyPair, raw_key
from .replay import DEFAULT_WINDOW, MAX_COUNTER, ReplayWindow

__all__ = ["HEADER_LEN", "OpenError", "Opener", "SealedParts", "Sealer"]

PREFIX_LEN: Final = 16
NONCE_LEN: Final = 24
KEY_LEN: Final = 32
PROOF_LEN: Final = 40
HEADER_LEN: Final = NONCE_LEN + KEY_LEN + PROOF_LEN  # SealedParts.header()
TAG_LEN: Final = aead.TAG_LEN
MAX_FRAMES: Final = 65535
SESSION_MAX_MESSAGES: Final = 1 << 20
SESSION_MAX_SECONDS: Final = 300.0
MAX_SESSION_AGE: Final = 600.0
CLOCK_SKEW: Final = 60.0
MAX_PEERS: Final = 4096
_PROOF_CONTEXT: Final = b"agp-mesh e2e session v2"
_PROOF_PERSON: Final = b"agp-e2e-proof-v2"
_POSITION: Final = struct.Struct(">HH")
_U64: Final = struct.Struct(">Q")
_NONCE_PAD: Final = bytes(aead.NONCE_LEN - NONCE_LEN)
_ONE_OF_ONE: Final = _POSITION.pack(0, 1)
_seal, _open = aead.seal, aead.open_


class OpenError(Unauthenticated):
    """A sealed payload did not authenticate (tampered, wrong key, forged session)."""


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


def _sender_raw(key: bytes) -> bytes:
    try:
        return _peer_raw(key)
    except ConfigError:
        raise Malformed("malformed sender key") from None


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
    __slots__ = ("counter", "created", "header_tail", "key", "prefix")

    def __init__(self, key: bytes, pub: bytes, prefix: bytes, proof: bytes, created: float):
        self.key, self.prefix, self.created, self.counter = key, prefix, created, 0
        self.header_tail = pub + proof  # what follows the nonce in every header


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
        frames = [plaintext] if isinstance(plaintext, (bytes, bytearray, memoryview)) \
            else list(plaintext)
        header, sealed, _ = self.seal_frames(recipient_public, frames, aad)
        return SealedParts.from_header(header, sealed)

    def seal_frames(self, recipient_public: bytes, frames: list[Any], aad: bytes = b""
                    ) -> tuple[bytes, list[bytearray], bytes]:
        """``(header, sealed frames, session key)``: the lean form of :meth:`seal` the mesh
        sends; the session key seals the answer (``security.payload.seal_reply``)."""
        n = len(frames)
        if not 1 <= n <= MAX_FRAMES:
            raise Malformed(f"a payload has 1 to {MAX_FRAMES} frames")
        recipient = _peer_raw(recipient_public)
        s = self._sessions.get(recipient)
        if s is None or s.counter + n > self.max_messages \
                or self._clock() - s.created >= self.max_seconds:
            s = self._new_session(recipient)
        first = s.counter
        s.counter = first + n
        prefix, key = s.prefix, s.key
        nonce = prefix + _U64.pack(first)
        if n == 1:
            sealed = [_seal(key, nonce + _NONCE_PAD, aad + _ONE_OF_ONE, frames[0])]
        else:
            sealed = [_seal(key, prefix + _U64.pack(first + i) + _NONCE_PAD,
                            aad + _POSITION.pack(i, n), f) for i, f in enumerate(frames)]
        return nonce + s.header_tail, sealed, key

    def forget(self, recipient_public: bytes) -> None:
        """Drop the session to this recipient (after it answered UNKNOWN_SESSION)."""
        self._sessions.pop(_peer_raw(recipient_public), None)

    def _new_session(self, recipient: bytes) -> _SendSession:
        now = self._clock()
        eph = PrivateKey.generate()
        try:
            key = Box(eph, PublicKey(recipient)).shared_key()
            k_ss = self._static.get(recipient)
        except (CryptoError, ValueError, TypeError) as exc:
            raise ConfigError(f"unusable recipient key: {exc}") from None
        pub, prefix = bytes(eph.public_key), os.urandom(PREFIX_LEN)
        created = _U64.pack(int(now * 1000))
        proof = created + _proof_mac(k_ss, self._me, recipient, pub, prefix, created)
        s = self._sessions[recipient] = _SendSession(key, pub, prefix, proof, now)
        self._sessions.move_to_end(recipient)
        if len(self._sessions) > self._max_peers:
            self._sessions.popitem(last=False)
        return s


class _RecvSession:
    __slots__ = ("created", "given", "key", "prefix", "sender", "tail", "window")

    def __init__(self, sender: bytes, key: bytes, prefix: bytes, tail: bytes, created: float,
                 window: int, given: bytes | None) -> None:
        self.sender, self.key, self.prefix, self.created = sender, key, prefix, created
        self.tail = tail  # what follows the nonce in every header: session_pub || proof
        self.window = ReplayWindow(window)
        # the sender's key as the caller gave it when the session was verified: the same
        # bytes again name the same sender without decoding and comparing its raw form
        self.given = given


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
        if (len(parts.nonce) != NONCE_LEN or len(parts.session_pub) != KEY_LEN
                or len(parts.session_proof) != PROOF_LEN):
            raise Malformed("malformed sealed payload")
        return self.open_sealed(sender_public, parts.header(), parts.frames, aad)[0]

    def open_sealed(self, sender_public: bytes, header: bytes, frames: Sequence[Any],
                    aad: bytes = b"") -> tuple[list[bytes], bytes]:
        """Open what :meth:`Sealer.seal_frames` made: ``header`` and its sealed frames.
        Returns the frames and the session key (which seals the answer)."""
        n = len(frames)
        if len(header) != HEADER_LEN or not 1 <= n <= MAX_FRAMES:
            raise Malformed("malformed sealed payload")
        header = bytes(header)
        session_pub = header[NONCE_LEN:NONCE_LEN + KEY_LEN]
        session = self._sessions.get(session_pub)
        fresh = session is None
        if session is None:
            session = self._verify_session(_sender_raw(sender_public), header, sender_public)
        elif not ((sender_public == session.given  # the key the session was verified with
                   or hmac.compare_digest(session.sender, _sender_raw(sender_public)))
                  and header[NONCE_LEN:] == session.tail
                  and header.startswith(session.prefix)):
            raise OpenError("session does not match its sender, nonce prefix or proof")
        if self._clock() - session.created > self.max_session_age:
            raise Replayed("session older than the maximum age")
        first = _U64.unpack_from(header, PREFIX_LEN)[0]
        if first + n - 1 > MAX_COUNTER:
            raise Malformed("counter out of range")
        key, prefix = session.key, session.prefix
        try:
            if n == 1:
                out = [_open(key, header[:NONCE_LEN] + _NONCE_PAD, aad + _ONE_OF_ONE, frames[0])]
            else:
                out = [_open(key, prefix + _U64.pack(first + i) + _NONCE_PAD,
                             aad + _POSITION.pack(i, n), f) for i, f in enumerate(frames)]
        except (CryptoError, ValueError, TypeError):
            raise OpenError("payload did not authenticate (tampered, reordered, dropped, or "
                            "associated data mismatch)") from None
        # authentic: now a duplicate is a replay (checked after, so tampering reads as such)
        window = session.window
        window.check(first, n)
        if fresh:
            self._store(session_pub, session)
        else:
            self._sessions.move_to_end(session_pub)
        window.commit(first, n)
        return out, key

    def _verify_session(self, sender: bytes, header: bytes, given: Any) -> _RecvSession:
        session_pub = header[NONCE_LEN:NONCE_LEN + KEY_LEN]
        proof = header[NONCE_LEN + KEY_LEN:]
        if session_pub in self._evicted:
            raise UnknownSession("e2e session forgotten; the sender must start a new one")
        created_b = proof[:8]
        prefix = header[:PREFIX_LEN]
        try:
            k_ss = self._static.get(sender)
        except (CryptoError, ValueError, TypeError):
            raise OpenError("unusable sender key") from None
        mac = _proof_mac(k_ss, sender, self._me, session_pub, prefix, created_b)
        if not hmac.compare_digest(mac, proof[8:]):
            raise OpenError("session proof does not authenticate the sender")
        created = _U64.unpack(created_b)[0] / 1000.0
        if created > self._clock() + self.clock_skew:
            raise OpenError("session created in the future")
        try:
            key = Box(self._private, PublicKey(session_pub)).shared_key()
        except (CryptoError, ValueError, TypeError):
            raise OpenError("unusable session key") from None
        return _RecvSession(sender, key, prefix, header[NONCE_LEN:], created, self._window,
                            given if type(given) is bytes else None)

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
