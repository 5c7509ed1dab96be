"""Sealing a message's payload for whichever instance the router will pick, and its answer.

The client does not know which instance of a service will serve a request: the router
balances. So the payload is sealed once under a fresh content key (AEGIS-256), and that
32-byte key is sealed for each instance's public key with the session-based ``Sealer``
(ephemeral session keys, counter nonces, replay window at the receiver, sender proof).
Whichever instance gets the message opens its own copy of the content key; the router, which
holds none of these keys, sees only ciphertext. With one recipient (a reply, or a service with
a single key) the frames are sealed directly, with no content key.

The e2e blob travels in the header (``Envelope.nonce``), fixed-size fields, no codec:

- ``0x01 || key_id(8) || sealer_header(96)``: sealed directly for one recipient;
- ``0x02 || count(1) || count * (key_id(8) || sealer_header(96) || wrapped_key(64))``.

key_id is the first 8 bytes of the recipient's raw public key.

The answer. Sealing a request yields a :data:`ReplyKey`: the key the request was sealed
under (the session key, or the content key) and a nonce base unique to that request. The
instance seals its one reply with it (:func:`seal_reply`) and the client opens it with the
same (:func:`open_reply`): no header, no session, no replay window. Only the client and
whoever could open the request know that key, so a reply that opens came from an instance
the request was sealed to; its nonce (base, then ``0x00000001`` and the frame index: request
frames have zeros there) never repeats because an instance answers an accepted request once,
and the client takes one reply per request (the associated data names it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import nacl.utils
from nacl.exceptions import CryptoError

from mesh.errors import Malformed, NotARecipient, Unauthenticated
from security import aead
from security.e2e import HEADER_LEN, NONCE_LEN, Opener, Sealer
from security.keys import KeyPair, raw_key

MAX_RECIPIENTS: Final = 64
_DIRECT: Final = 1
_WRAPPED: Final = 2
_KEY_ID: Final = 8
_WRAPPED_KEY: Final = 32 + aead.TAG_LEN
_ENTRY: Final = _KEY_ID + HEADER_LEN + _WRAPPED_KEY
DIRECT_BLOB_LEN: Final = 1 + _KEY_ID + HEADER_LEN
_POSITION: Final = struct.Struct(">HH")
_NONCE: Final = struct.Struct(">I28x")  # frame index; the content key is fresh per message
_REPLY_NONCE: Final = struct.Struct(">II")  # after the 24-byte base: 1, frame index
_CONTENT_BASE: Final = bytes(NONCE_LEN)
_ONE_OF_ONE: Final = _POSITION.pack(0, 1)
_FIRST_REPLY_NONCE: Final = _REPLY_NONCE.pack(1, 0)

ReplyKey = tuple[bytes, bytes]  # (key, 24-byte nonce base): seals the one answer to a request


class PayloadBoxes:
    """One process's sealing and opening state (cached keys, sessions, replay windows)."""

    def __init__(self, keypair: KeyPair) -> None:
        self.keypair = keypair
        self.public = keypair.public
        self._id = keypair.public_raw[:_KEY_ID]
        self.sealer = Sealer(keypair)
        self.opener = Opener(keypair)

    def seal(self, recipients: Sequence[bytes], frames: Sequence[Any], aad: bytes
             ) -> tuple[bytes, list[Any], ReplyKey]:
        """(blob for the header, sealed frames, the key of the answer) for any one of
        ``recipients`` to open."""
        frames = list(frames) or [b""]
        if len(recipients) == 1:
            header, sealed, key = self.sealer.seal_frames(recipients[0], frames, aad)
            blob = b"".join((b"\x01", raw_key(recipients[0])[:_KEY_ID], header))
            return blob, sealed, (key, header[:NONCE_LEN])
        if not 1 <= len(recipients) <= MAX_RECIPIENTS:
            raise Malformed(f"1 to {MAX_RECIPIENTS} recipients, not {len(recipients)}")
        content_key = nacl.utils.random(32)
        n = len(frames)
        sealed = [aead.seal(content_key, _NONCE.pack(i), aad + _POSITION.pack(i, n), f)
                  for i, f in enumerate(frames)]
        parts = [bytes((_WRAPPED, len(recipients)))]
        for r in recipients:
            header, (wrapped,), _ = self.sealer.seal_frames(r, [content_key], aad)
            parts += (raw_key(r)[:_KEY_ID], header, wrapped)
        return b"".join(parts), sealed, (content_key, _CONTENT_BASE)

    def open(self, sender_public: bytes, blob: bytes, frames: Sequence[Any], aad: bytes
             ) -> tuple[list[bytes], ReplyKey]:
        """Plaintext frames and the key of the answer; raises Unauthenticated (tampered,
        wrong key), Replayed or Malformed."""
        kind = blob[0] if blob else 0
        if kind == _DIRECT and len(blob) == DIRECT_BLOB_LEN:
            if blob[1:1 + _KEY_ID] != self._id:
                raise NotARecipient("this payload was not sealed for this key")
            header = blob[1 + _KEY_ID:]
            out, key = self.opener.open_sealed(sender_public, header, frames, aad)
            return out, (key, header[:NONCE_LEN])
        if kind != _WRAPPED or len(blob) < 2 + _ENTRY or len(blob) != 2 + blob[1] * _ENTRY:
            raise Malformed("undecodable e2e header")
        for at in range(2, len(blob), _ENTRY):
            if blob[at:at + _KEY_ID] == self._id:
                break
        else:
            raise NotARecipient("this payload was not sealed for this key")
        header = blob[at + _KEY_ID:at + _KEY_ID + HEADER_LEN]
        (content_key,), _ = self.opener.open_sealed(
            sender_public, header, [blob[at + _KEY_ID + HEADER_LEN:at + _ENTRY]], aad)
        n = len(frames)
        try:
            out = [aead.open_(content_key, _NONCE.pack(i), aad + _POSITION.pack(i, n), f)
                   for i, f in enumerate(frames)]
        except (CryptoError, ValueError):
            raise Unauthenticated("payload frames were tampered with, reordered, dropped or "
                                  "added") from None
        return out, (content_key, _CONTENT_BASE)


def seal_reply(reply_key: ReplyKey, frames: Sequence[Any], aad: bytes) -> list[bytearray]:
    """The answer's frames sealed with the key of the request it answers (once per request)."""
    key, base = reply_key
    frames = list(frames) or [b""]  # never nothing: a stripped answer must not open
    n = len(frames)
    if n == 1:
        return [aead.seal(key, base + _FIRST_REPLY_NONCE, aad + _ONE_OF_ONE, frames[0])]
    return [aead.seal(key, base + _REPLY_NONCE.pack(1, i), aad + _POSITION.pack(i, n), f)
            for i, f in enumerate(frames)]


def open_reply(reply_key: ReplyKey, frames: Sequence[Any], aad: bytes) -> list[bytes]:
    """The answer's frames; Unauthenticated unless sealed by an instance the request was
    sealed to, for this request, whole and in order."""
    key, base = reply_key
    n = len(frames)
    try:
        if n == 0:
            raise ValueError("no frames")
        if n == 1:
            return [aead.open_(key, base + _FIRST_REPLY_NONCE, aad + _ONE_OF_ONE, frames[0])]
        return [aead.open_(key, base + _REPLY_NONCE.pack(1, i), aad + _POSITION.pack(i, n), f)
                for i, f in enumerate(frames)]
    except (CryptoError, ValueError):
        raise Unauthenticated("the reply did not authenticate: not from an instance the "
                              "request was sealed to, or tampered with") from None
