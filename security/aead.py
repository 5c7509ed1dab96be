"""AEGIS-256 sealing of one buffer, called straight into PyNaCl's libsodium.

Every sealed payload, stream chunk and topic batch of the mesh is one AEGIS-256 call
(libsodium, hardware AES where the CPU has it: ~8 GB/s for 1 MiB here). For the small
payloads of request-response the call itself is ~0.4 us, but ``nacl.bindings``' wrapper
around it costs ~2.5 us per call (argument checks, a zeroed ``ffi.new`` buffer, a copy of
the result): with four seals or opens per sealed request that was the largest part of
end-to-end sealing's cost. So this module calls the same C function through PyNaCl's own
cffi library and keeps the few checks that matter for memory safety: the key and nonce
lengths (C reads 32 bytes from each pointer) and the ciphertext holding a whole tag.

Importing ``nacl.bindings`` first matters: it runs ``sodium_init()``, which picks the
AES-NI implementation (without it AEGIS falls back to software AES, ~25x slower).
"""

from __future__ import annotations

from typing import Final

import nacl.bindings
from nacl._sodium import ffi, lib
from nacl.exceptions import CryptoError

__all__ = ["KEY_LEN", "NONCE_LEN", "TAG_LEN", "open_", "seal"]

KEY_LEN: Final[int] = nacl.bindings.crypto_aead_aegis256_KEYBYTES
NONCE_LEN: Final[int] = nacl.bindings.crypto_aead_aegis256_NPUBBYTES
TAG_LEN: Final[int] = nacl.bindings.crypto_aead_aegis256_ABYTES
_NULL: Final = ffi.NULL
_encrypt: Final = lib.crypto_aead_aegis256_encrypt
_decrypt: Final = lib.crypto_aead_aegis256_decrypt
_from_buffer: Final = ffi.from_buffer


def seal(key: bytes, nonce: bytes, aad: bytes, message: bytes | bytearray | memoryview
         ) -> bytearray:
    """``message`` sealed under ``key`` and ``nonce`` (never reuse a pair), with ``aad``
    authenticated alongside; the result is ``len(message) + TAG_LEN`` bytes."""
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("AEGIS-256 takes a 32-byte key and a 32-byte nonce")
    if type(message) is not bytes:
        message = _from_buffer(message)
    n = len(message)
    out = bytearray(n + TAG_LEN)
    _encrypt(_from_buffer(out), _NULL, message, n, aad, len(aad), _NULL, nonce, key)
    return out


def open_(key: bytes, nonce: bytes, aad: bytes, sealed: bytes | bytearray | memoryview
          ) -> bytes:
    """The message inside ``sealed``; CryptoError if it, the nonce, the key or ``aad``
    was not what it was sealed with."""
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("AEGIS-256 takes a 32-byte key and a 32-byte nonce")
    if type(sealed) is not bytes:
        sealed = _from_buffer(sealed)
    n = len(sealed)
    if n < TAG_LEN:
        raise CryptoError("sealed message shorter than its tag")
    out = bytearray(n - TAG_LEN)
    if _decrypt(_from_buffer(out), _NULL, _NULL, sealed, n, aad, len(aad), nonce, key) != 0:
        raise CryptoError("sealed message did not authenticate")
    return bytes(out)
