"""Sealing a message's payload for whichever instance the router will pick.

The client does not know which instance of a service will serve a request: the router
balances. So the payload is sealed once under a fresh content key (XSalsa20-Poly1305), and
that 32-byte key is sealed for each instance's public key with the session-based
``Sealer`` (ephemeral session keys, counter nonces, replay window at the receiver, sender
proof). Whichever instance gets the message opens its own copy of the content key; the
router, which holds none of these keys, sees only ciphertext. With one recipient (a reply,
or a service with a single key) the frames are sealed directly, with no content key.

The e2e blob travels in the header (``Envelope.nonce``) as msgpack:
``[[key_id(8), sealer_header(96), wrapped(or b"")], ...]``; key_id is the first 8 bytes of
the recipient's raw public key.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import msgpack
import nacl.bindings
import nacl.utils

from mesh.errors import Malformed, Unauthenticated
from security.e2e import Opener, SealedParts, Sealer
from security.keys import KeyPair, raw_key

MAX_RECIPIENTS: Final = 64
_KEY_ID: Final = 8
_POS: Final = struct.Struct("<II")


class PayloadBoxes:
    """One process's sealing and opening state (cached boxes, sessions, replay windows)."""

    def __init__(self, keypair: KeyPair) -> None:
        self.keypair = keypair
        self.public = keypair.public
        self._id = keypair.public_raw[:_KEY_ID]
        self.sealer = Sealer(keypair)
        self.opener = Opener(keypair)

    def seal(self, recipients: Sequence[bytes], frames: Sequence[bytes], aad: bytes
             ) -> tuple[bytes, list[bytes]]:
        """(blob for the header, sealed frames) for any one of ``recipients`` to open."""
        if not 1 <= len(recipients) <= MAX_RECIPIENTS:
            raise Malformed(f"1 to {MAX_RECIPIENTS} recipients, not {len(recipients)}")
        frames = [bytes(f) for f in frames] or [b""]
        if len(recipients) == 1:
            parts = self.sealer.seal(recipients[0], frames, aad)
            kid = raw_key(recipients[0])[:_KEY_ID]
            return msgpack.packb([[kid, parts.header(), b""]]), list(parts.frames)
        content_key = nacl.utils.random(32)
        sealed = []
        n = len(frames)
        for i, f in enumerate(frames):  # index and count inside: no reordering or dropping
            nonce = nacl.utils.random(24)
            sealed.append(nonce + nacl.bindings.crypto_secretbox(_POS.pack(i, n) + f, nonce,
                                                                 content_key))
        entries = []
        for r in recipients:
            parts = self.sealer.seal(r, [content_key], aad)
            entries.append([raw_key(r)[:_KEY_ID], parts.header(), parts.frames[0]])
        return msgpack.packb(entries), sealed

    def open(self, sender_public: bytes, blob: bytes, frames: Sequence[bytes], aad: bytes
             ) -> list[bytes]:
        """Plaintext frames; raises Unauthenticated (tampered, wrong key), Replayed, Malformed."""
        try:
            entries = msgpack.unpackb(blob, max_array_len=MAX_RECIPIENTS, max_bin_len=4096)
        except Exception:
            raise Malformed("undecodable e2e header") from None
        if not isinstance(entries, list):
            raise Malformed("undecodable e2e header")
        mine = next((e for e in entries if isinstance(e, list) and len(e) == 3
                     and e[0] == self._id), None)
        if mine is None:
            raise Unauthenticated("this payload was not sealed for this key")
        _, header, wrapped = mine
        if not wrapped:  # sealed directly for us
            return self.opener.open_frames(sender_public, SealedParts.from_header(header, frames),
                                           aad)
        content_key = self.opener.open(sender_public, SealedParts.from_header(header, [wrapped]),
                                       aad)
        out = []
        n = len(frames)
        for i, f in enumerate(frames):
            if len(f) < 24 + 16 + _POS.size:
                raise Malformed("sealed frame too short")
            try:
                plain = nacl.bindings.crypto_secretbox_open(bytes(f[24:]), bytes(f[:24]),
                                                            content_key)
            except Exception:
                raise Unauthenticated("a payload frame was tampered with") from None
            if _POS.unpack_from(plain) != (i, n):
                raise Unauthenticated("payload frames were reordered, dropped or added")
            out.append(plain[_POS.size:])
        return out
