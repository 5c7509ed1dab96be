"""Per-topic SecretBox keys for pub/sub end-to-end encryption.

A topic's key *owner* (the publisher, or a key service the router trusts to follow RBAC)
makes a 32-byte key per topic and generation, hands it to each authorized subscriber
sealed to that subscriber's static key (:meth:`TopicKeyring.wrap_for`, an authenticated
``Box(owner_secret, subscriber_public)``, so a subscriber knows who the key came from), and
calls :meth:`TopicKeyring.rotate` when membership changes so a departed subscriber cannot
read what follows. The previous ``keep`` generations stay usable for messages in flight.

Sealed topic payload: ``version(1) | generation(4) | nonce(24) | SecretBox(kind(1) | body)``,
where the nonce is a per-keyring random prefix(16) and a 64-bit counter, and ``kind`` tells
a single payload from a batch (``count(4)`` then ``len(4) item`` each), so a batch of
coalesced publishes costs one seal. A subscriber keeps a replay window per
(topic, generation, publisher prefix).

Limits, stated plainly: a topic key is shared by every holder, so it gives confidentiality
from the router/proxy and from non-members, not proof of WHICH member published (sign or use
request/reply sealing when that matters). Not thread-safe: one keyring per thread or loop.
"""

from __future__ import annotations

import collections
import os
import struct
from dataclasses import dataclass
from typing import Final

import nacl.bindings
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from mesh.errors import ConfigError, Malformed, TooLarge

from .e2e import OpenError
from .keys import KeyPair, raw_key
from .replay import DEFAULT_WINDOW, ReplayWindow

__all__ = ["TopicKey", "TopicKeyring"]

VERSION: Final = 1
KIND_SINGLE: Final = 1
KIND_BATCH: Final = 2
MAX_BATCH: Final = 65536
MAX_TOPIC_BYTES: Final = 255
_HEAD: Final = struct.Struct(">BI")  # version, generation
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_WRAP_HEAD: Final = struct.Struct(">BI")


@dataclass(frozen=True)
class TopicKey:
    topic: str
    generation: int
    key: bytes

    def __repr__(self) -> str:
        return f"TopicKey({self.topic!r}, generation={self.generation})"


class TopicKeyring:
    """Topic keys by generation, for owners (rotate, wrap) and members (unwrap, open)."""

    def __init__(self, keypair: KeyPair, *, keep: int = 2, window: int = DEFAULT_WINDOW,
                 max_windows: int = 4096) -> None:
        self._private: PrivateKey = keypair.private_key()
        self.keep, self._window, self._max_windows = keep, window, max_windows
        self._keys: dict[str, collections.OrderedDict[int, bytes]] = {}
        self._prefix = os.urandom(16)
        self._counter = 0
        self._windows: collections.OrderedDict[tuple[str, int, bytes], ReplayWindow] = \
            collections.OrderedDict()

    # ---- keys -------------------------------------------------------------------------

    def rotate(self, topic: str) -> int:
        """Make a new key for ``topic``; returns its generation (1 for the first)."""
        _check_topic(topic)
        gens = self._keys.get(topic)
        generation = (max(gens) + 1) if gens else 1
        self.install(TopicKey(topic, generation, os.urandom(32)))
        return generation

    def install(self, key: TopicKey) -> None:
        _check_topic(key.topic)
        if len(key.key) != 32 or not 0 < key.generation < 2**32:
            raise ConfigError("bad topic key")
        gens = self._keys.setdefault(key.topic, collections.OrderedDict())
        gens[key.generation] = key.key
        for g in sorted(gens)[:-(self.keep + 1)]:  # keep the newest keep+1 generations
            del gens[g]

    def current(self, topic: str) -> TopicKey | None:
        gens = self._keys.get(topic)
        if not gens:
            return None
        g = max(gens)
        return TopicKey(topic, g, gens[g])

    def generations(self, topic: str) -> list[int]:
        return sorted(self._keys.get(topic, ()))

    def wrap_for(self, topic: str, subscriber_public: bytes, *,
                 generation: int | None = None) -> bytes:
        """The topic key sealed to one subscriber: ``nonce(24) | Box(...)``."""
        tk = self.current(topic) if generation is None else self._get(topic, generation)
        if tk is None:
            raise ConfigError(f"no key for topic {topic!r}")
        peer = subscriber_public if len(subscriber_public) == 32 else raw_key(subscriber_public)
        box = Box(self._private, PublicKey(bytes(peer)))
        body = _WRAP_HEAD.pack(VERSION, tk.generation) + tk.key + tk.topic.encode()
        return bytes(box.encrypt(body))

    def unwrap(self, owner_public: bytes, blob: bytes) -> TopicKey:
        """Open a wrapped key from ``owner_public`` and install it."""
        peer = owner_public if len(owner_public) == 32 else raw_key(owner_public)
        try:
            body = Box(self._private, PublicKey(bytes(peer))).decrypt(bytes(blob))
        except (CryptoError, ValueError, TypeError):
            raise OpenError("wrapped topic key did not authenticate") from None
        if len(body) < _WRAP_HEAD.size + 33:
            raise Malformed("wrapped topic key too short")
        version, generation = _WRAP_HEAD.unpack_from(body)
        if version != VERSION:
            raise Malformed("unknown wrapped key version")
        key = body[_WRAP_HEAD.size:_WRAP_HEAD.size + 32]
        try:
            topic = body[_WRAP_HEAD.size + 32:].decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("bad topic in wrapped key") from None
        tk = TopicKey(topic, generation, key)
        self.install(tk)
        return tk

    # ---- payloads -----------------------------------------------------------------------

    def seal(self, topic: str, payload: bytes) -> bytes:
        return self._seal(topic, bytes([KIND_SINGLE]) + payload)

    def seal_batch(self, topic: str, payloads: list[bytes]) -> bytes:
        if not 1 <= len(payloads) <= MAX_BATCH:
            raise TooLarge(f"a batch holds 1 to {MAX_BATCH} payloads")
        parts = [bytes([KIND_BATCH]), _U32.pack(len(payloads))]
        for p in payloads:
            parts += (_U32.pack(len(p)), p)
        return self._seal(topic, b"".join(parts))

    def open(self, topic: str, blob: bytes) -> bytes:
        body = self._open(topic, blob, KIND_SINGLE)
        return body

    def open_batch(self, topic: str, blob: bytes) -> list[bytes]:
        body = memoryview(self._open(topic, blob, KIND_BATCH))
        if len(body) < 4:
            raise Malformed("batch too short")
        count, pos, out = _U32.unpack_from(body)[0], 4, []
        if not 1 <= count <= MAX_BATCH:
            raise Malformed("bad batch count")
        for _ in range(count):
            if pos + 4 > len(body):
                raise Malformed("truncated batch")
            n = _U32.unpack_from(body, pos)[0]
            pos += 4
            if pos + n > len(body):
                raise Malformed("truncated batch")
            out.append(bytes(body[pos:pos + n]))
            pos += n
        if pos != len(body):
            raise Malformed("trailing bytes in batch")
        return out

    def _get(self, topic: str, generation: int) -> TopicKey | None:
        gens = self._keys.get(topic)
        key = None if gens is None else gens.get(generation)
        return None if key is None else TopicKey(topic, generation, key)

    def _seal(self, topic: str, plaintext: bytes) -> bytes:
        tk = self.current(topic)
        if tk is None:
            raise ConfigError(f"no key for topic {topic!r}")
        if self._counter >= 2**64 - 1:
            self._prefix, self._counter = os.urandom(16), 0
        nonce = self._prefix + _U64.pack(self._counter)
        self._counter += 1
        ct = nacl.bindings.crypto_secretbox_easy(plaintext, nonce, tk.key)
        return _HEAD.pack(VERSION, tk.generation) + nonce + ct

    def _open(self, topic: str, blob: bytes, kind: int) -> bytes:
        if len(blob) < _HEAD.size + 24 + 16 + 1:
            raise Malformed("sealed topic payload too short")
        version, generation = _HEAD.unpack_from(blob)
        if version != VERSION:
            raise Malformed("unknown sealed payload version")
        tk = self._get(topic, generation)
        if tk is None:
            raise OpenError(f"no key for {topic!r} generation {generation}")
        nonce = bytes(blob[_HEAD.size:_HEAD.size + 24])
        try:
            pt = nacl.bindings.crypto_secretbox_open_easy(bytes(blob[_HEAD.size + 24:]), nonce,
                                                         tk.key)
        except (CryptoError, ValueError, TypeError):
            raise OpenError("topic payload did not authenticate") from None
        if not pt or pt[0] != kind:
            raise Malformed("payload kind mismatch (single vs batch)")
        wkey = (topic, generation, nonce[:16])
        window = self._windows.get(wkey)
        if window is None:
            window = self._windows[wkey] = ReplayWindow(self._window)
            if len(self._windows) > self._max_windows:
                self._windows.popitem(last=False)
        counter = _U64.unpack_from(nonce, 16)[0]
        window.check_and_commit(counter)
        return pt[1:]


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise ConfigError("topic must be 1 to 255 bytes of text")
