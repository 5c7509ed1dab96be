"""Keys for one stream's chunks: an ephemeral-ephemeral exchange, then AEGIS-256 per chunk.

Why not seal every chunk like a request: a stream may carry gigabytes, and through PyNaCl's
Box/SecretBox wrappers XSalsa20-Poly1305 seals ~0.6 GB/s here, while libsodium's AEGIS-256
(an AES-round AEAD with a 256-bit key and nonce) seals and opens 1 MiB at ~8 GB/s. And a
stream is long-lived, so its key should die with it.

The exchange (both ends forget their ephemeral secrets when the stream ends, so a later
theft of either side's long-term key opens nothing of it — forward secrecy on both sides):

- the client makes ``e_c`` and puts ``e_c.pub`` in the STREAM_OPEN envelope; the open is
  sealed to the service's keys with ``e_c.pub`` inside its associated data, so nobody on
  the path can swap it, and the agent knows it came from the client's long-term key;
- the agent makes ``e_a`` and answers, in its first credit, ``(a_static.pub, e_a.pub,
  proof)`` with ``proof = BLAKE2b(key=X25519(a_static, e_c.pub), e_c.pub | e_a.pub | id)``:
  only the holder of the agent's long-term secret can make it, and the client checks it
  with ``X25519(e_c, a_static.pub)``;
- both derive ``K = BLAKE2b(X25519(e_a, e_c) | e_c.pub | e_a.pub | id)``.

Frame ``i`` of chunk ``n`` (from 0) is sealed under ``K`` with ``(n, i)`` as its nonce and
the stream id and frame layout as associated data; the receiver expects ``n`` in order, so a
replayed, dropped, reordered or tampered chunk fails to open. Every frame has a nonce of its
own: AEGIS absorbs associated data into a state word that its first keystream block does not
read, so frames told apart by associated data alone would share their first 16 bytes of
keystream (the router would read the XOR of their openings: a chunk's frames are a msgpack
head and its arrays). That is for chunks through the router; peer to
peer they ride the CURVE session between the two ends, which is end to end already (the
exchange above still runs: it proves the agent's long-term key, which the client then uses
as the CURVE server key). This module holds no socket: it is fed bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Final

import nacl.bindings as sodium
import nacl.utils
from nacl.exceptions import CryptoError

from mesh.errors import Malformed, Unauthenticated

__all__ = ["ChunkOpener", "ChunkSealer", "ClientExchange", "agent_answer", "KEY_LEN"]

KEY_LEN: Final = 32
TAG_LEN: Final = sodium.crypto_aead_aegis256_ABYTES
NONCE_LEN: Final = sodium.crypto_aead_aegis256_NPUBBYTES
_PERSON_KEY: Final = b"agp-stream-key1"
_PERSON_PROOF: Final = b"agp-stream-prf1"
_AAD: Final = struct.Struct("<QHH")  # stream id, frame index, frame count
_MAX_FRAMES: Final = 1024


def _x25519(secret: bytes, public: bytes) -> bytes:
    try:
        return sodium.crypto_scalarmult(secret, public)
    except (CryptoError, TypeError, ValueError):
        raise Unauthenticated("not a usable Curve25519 public key") from None


def _check_pub(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise Malformed(f"{what} must be {KEY_LEN} bytes")
    return key


def _nonce(counter: int, index: int) -> bytes:
    """The nonce of frame ``index`` of chunk ``counter``: chunk (8 bytes) | frame (2 bytes)."""
    return counter.to_bytes(8, "little") + index.to_bytes(2, "little") + bytes(NONCE_LEN - 10)


def _derive(shared: bytes, client_pub: bytes, agent_pub: bytes, stream_id: int) -> bytes:
    return hashlib.blake2b(shared + client_pub + agent_pub + stream_id.to_bytes(8, "little"),
                           digest_size=KEY_LEN, person=_PERSON_KEY).digest()


def _proof(static_shared: bytes, client_pub: bytes, agent_pub: bytes, stream_id: int) -> bytes:
    return hashlib.blake2b(client_pub + agent_pub + stream_id.to_bytes(8, "little"),
                           key=static_shared, digest_size=32, person=_PERSON_PROOF).digest()


class ClientExchange:
    """The client's half: its ephemeral key for the open, then the key from the answer."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self._secret = nacl.utils.random(KEY_LEN)
        self.public = sodium.crypto_scalarmult_base(self._secret)

    def finish(self, agent_static_pub: bytes, agent_eph_pub: bytes, proof: bytes) -> bytes:
        """The stream key, once the agent proved it holds ``agent_static_pub``'s secret."""
        _check_pub(agent_static_pub, "agent key")
        _check_pub(agent_eph_pub, "agent session key")
        if self._secret is None:
            raise Malformed("this exchange already finished")
        expect = _proof(_x25519(self._secret, agent_static_pub), self.public, agent_eph_pub,
                        self.stream_id)
        if not isinstance(proof, bytes) or not hmac.compare_digest(expect, proof):
            raise Unauthenticated("the stream's answer was not made by the agent's key")
        key = _derive(_x25519(self._secret, agent_eph_pub), self.public, agent_eph_pub,
                      self.stream_id)
        self._secret = None  # type: ignore[assignment]  # forget it: forward secrecy
        return key


def agent_answer(agent_static_secret: bytes, client_eph_pub: bytes, stream_id: int
                 ) -> tuple[bytes, bytes, bytes]:
    """(agent ephemeral public, proof, stream key) for a client's ephemeral key."""
    _check_pub(client_eph_pub, "client session key")
    eph_secret = nacl.utils.random(KEY_LEN)
    eph_pub = sodium.crypto_scalarmult_base(eph_secret)
    proof = _proof(_x25519(agent_static_secret, client_eph_pub), client_eph_pub, eph_pub,
                   stream_id)
    key = _derive(_x25519(eph_secret, client_eph_pub), client_eph_pub, eph_pub, stream_id)
    return eph_pub, proof, key


class ChunkSealer:
    """Seals the sender's chunks in order under one stream key."""

    def __init__(self, key: bytes, stream_id: int) -> None:
        self._key = key
        self._id = stream_id
        self.counter = 0

    def seal(self, frames: Sequence[bytes]) -> list[bytes]:
        n = len(frames)
        if not 1 <= n <= _MAX_FRAMES:
            raise Malformed(f"a chunk has 1 to {_MAX_FRAMES} frames, not {n}")
        counter = self.counter
        self.counter += 1
        enc = sodium.crypto_aead_aegis256_encrypt
        return [enc(bytes(f), _AAD.pack(self._id, i, n), _nonce(counter, i), self._key)
                for i, f in enumerate(frames)]


class ChunkOpener:
    """Opens the receiver's chunks, refusing anything out of order."""

    def __init__(self, key: bytes, stream_id: int) -> None:
        self._key = key
        self._id = stream_id
        self.counter = 0

    def open(self, frames: Sequence[bytes]) -> list[bytes]:
        n = len(frames)
        if not 1 <= n <= _MAX_FRAMES:
            raise Malformed(f"a chunk has 1 to {_MAX_FRAMES} frames, not {n}")
        counter = self.counter
        dec = sodium.crypto_aead_aegis256_decrypt
        try:
            out = [dec(bytes(f), _AAD.pack(self._id, i, n), _nonce(counter, i), self._key)
                   for i, f in enumerate(frames)]
        except (CryptoError, TypeError, ValueError):
            raise Unauthenticated("a stream chunk was tampered with, replayed or "
                                  "reordered") from None
        self.counter += 1
        return out
