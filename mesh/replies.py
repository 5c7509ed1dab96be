"""The caller's value from a REPLY's frames: plain (raw bytes or msgpack), or sealed end to end
and opened with the key of the request it answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh import codec
from mesh.errors import Unauthenticated
from mesh.wire import Flag

_RAW, _ENCRYPTED = int(Flag.RAW), int(Flag.ENCRYPTED)


def decode_reply(msg: list[bytes]) -> Any:
    """The user value of a REPLY: raw bytes or decoded msgpack (arrays as numpy)."""
    flags = msg[0][2]
    payload = msg[3:]
    if flags & _RAW:
        return payload[0] if payload else b""
    if not payload:
        return None
    return codec.decode(payload)


# security.payload.open_reply, imported with the first sealed reply (an insecure client
# never imports nacl) and kept: an import statement per reply costs ~0.7 us
_open_reply: Callable[..., list[bytes]] | None = None


def open_sealed_reply(msg: list[bytes], reply_key: Any, ident: int) -> Any:
    """The user value of the REPLY to a sealed request, opened with the request's
    ``security.payload.ReplyKey``: only an instance the request was sealed to could seal it."""
    global _open_reply
    if _open_reply is None:
        from security.payload import open_reply as _open_reply
    flags = msg[0][2]
    if not flags & _ENCRYPTED:
        raise Unauthenticated("the reply to a sealed request was not sealed")
    frames = _open_reply(reply_key, msg[3:], b"reply\0" + ident.to_bytes(8, "little"))
    if flags & _RAW:
        return frames[0]
    return codec.decode(frames) if frames != [b""] else None
