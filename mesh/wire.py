"""The agp-mesh framing, sans-IO: build and parse the frames of a multipart message.

Every message starts with a fixed 16-byte *route frame* so the router can route it with one
``struct`` unpack and never parse the protobuf header or the payload::

    offset size field
    0      1    version   (1)
    1      1    command   (Cmd)
    2      1    flags     (Flag bits)
    3      1    code      (ErrorCode on ERROR, else 0)
    4      4    value     u32: timeout in ms (REQUEST/SEND/STREAM_OPEN), credits
                          (STREAM_CREDIT), message count (PUBLISH batch, BATCH)
    8      8    ident     u64: request / stream id chosen by the sender, or the first
                          per-topic sequence number on PUBLISH frames leaving the proxy

Frame order after the route frame: address (destination on the way in, the peer's return
address on the way out), header (``agp.v1.Envelope`` or a control message), payload frames.
Nothing here touches a socket; the router, the client and the tests all feed it bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Final, NamedTuple

from mesh.errors import ErrorCode, Malformed, TooLarge, VersionMismatch

PROTOCOL_VERSION: Final = 1
ROUTE: Final = struct.Struct("<BBBBIQ")
ROUTE_SIZE: Final = ROUTE.size  # 16

# Hard caps on untrusted input. The router refuses anything over them before decoding it.
MAX_FRAMES: Final = 512
MAX_ADDRESS_BYTES: Final = 255
MAX_HEADER_BYTES: Final = 64 * 1024
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
MAX_TIMEOUT_MS: Final = 24 * 3600 * 1000


class Cmd(IntEnum):
    HELLO = 1
    WELCOME = 2
    READY = 3
    REQUEST = 4
    REPLY = 5
    SEND = 6
    PUBLISH = 7
    STREAM_OPEN = 8
    STREAM_DATA = 9
    STREAM_CREDIT = 10
    STREAM_END = 11
    HEARTBEAT = 12
    DISCONNECT = 13
    ERROR = 14
    SUBACK = 15
    CANCEL = 16
    PROGRESS = 17
    BATCH = 18  # several small messages in one frame (mesh.batch)


class Flag(IntFlag):
    NONE = 0
    IDEMPOTENT = 1  # the router may re-dispatch it when its instance dies
    ENCRYPTED = 2  # payload frames are end-to-end sealed
    RAW = 4  # payload is raw bytes, not msgpack
    BATCH = 8  # PUBLISH: each payload frame is one message; HELLO, WELCOME: takes BATCH
    DIRECT = 16  # STREAM_OPEN: data may flow peer to peer


class Route(NamedTuple):
    version: int
    cmd: int
    flags: int
    code: int
    value: int
    ident: int


def pack_route(cmd: int, flags: int = 0, code: int = 0, value: int = 0, ident: int = 0) -> bytes:
    """Build a route frame."""
    return ROUTE.pack(PROTOCOL_VERSION, cmd, flags, code, value, ident)


def parse_route(frame: bytes) -> Route:
    """Parse a route frame from untrusted bytes; raise Malformed or VersionMismatch."""
    if len(frame) != ROUTE_SIZE:
        raise Malformed(f"route frame must be {ROUTE_SIZE} bytes, got {len(frame)}")
    route = Route(*ROUTE.unpack(frame))
    if route.version != PROTOCOL_VERSION:
        raise VersionMismatch(f"protocol version {route.version}, expected {PROTOCOL_VERSION}")
    if route.cmd not in _COMMANDS:
        raise Malformed(f"unknown command {route.cmd}")
    return route


_COMMANDS: Final = frozenset(int(c) for c in Cmd)

HEARTBEAT_FRAME: Final = pack_route(Cmd.HEARTBEAT)
DISCONNECT_FRAME: Final = pack_route(Cmd.DISCONNECT)
SUBACK_FRAME: Final = pack_route(Cmd.SUBACK)


_NONCE_FIELD: Final = bytes([(9 << 3) | 2])  # Envelope.nonce: field 9, length-delimited
_ONE_BYTE: Final = [bytes([i]) for i in range(0x80)]


def with_nonce(envelope: bytes, blob: bytes) -> bytes:
    """A serialized Envelope with ``nonce = blob`` appended. Protobuf merges concatenated
    messages, so a sealed message's fixed header fields are serialized once and cached, and
    only the per-message e2e blob is encoded here (``envelope`` must not carry a nonce)."""
    n = len(blob)
    if n < 0x80:
        return b"".join((envelope, _NONCE_FIELD, _ONE_BYTE[n], blob))
    length = bytearray()
    while n > 0x7F:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    return b"".join((envelope, _NONCE_FIELD, length, blob))


def split_nonce(header: bytes, length: int) -> tuple[bytes, bytes] | None:
    """``(envelope, nonce)`` when ``header`` ends with the nonce field :func:`with_nonce`
    appends, of ``length`` (< 128) bytes; None when it does not (parse it whole). The
    envelope before it repeats from request to request, so a receiver can parse it once."""
    at = len(header) - length - 2
    if at < 0 or length >= 0x80 or header[at] != _NONCE_FIELD[0] or header[at + 1] != length:
        return None
    return header[:at], header[at + 2:]


def check_sizes(frames: list[bytes], max_message_bytes: int) -> int:
    """Return the total size of a message; raise TooLarge/Malformed past the caps."""
    if len(frames) > MAX_FRAMES:
        raise TooLarge(f"{len(frames)} frames, the limit is {MAX_FRAMES}")
    total = 0
    for f in frames:
        total += len(f)
    if total > max_message_bytes:
        raise TooLarge(f"message of {total} bytes, the limit is {max_message_bytes}")
    return total


def error_frames(
    code: ErrorCode, message: str, ident: int = 0, address: bytes = b""
) -> list[bytes]:
    """The frames of an ERROR message (without the routing id)."""
    from proto import agp_pb2

    detail = agp_pb2.ErrorDetail(code=int(code), message=message[:1024])
    return [pack_route(Cmd.ERROR, 0, int(code), 0, ident), address, detail.SerializeToString()]


def parse_error(route: Route, frames: list[bytes]) -> tuple[ErrorCode, str, dict[str, str]]:
    """Decode an ERROR message's detail; tolerate a missing or broken detail frame."""
    from proto import agp_pb2

    code = route.code
    message = ""
    details: dict[str, str] = {}
    if len(frames) > 2 and len(frames[2]) <= MAX_HEADER_BYTES:
        try:
            detail = agp_pb2.ErrorDetail.FromString(frames[2])
            message = detail.message
            details = dict(detail.details)
            code = detail.code or code
        except Exception:
            message = "undecodable error detail"
    try:
        return ErrorCode(code), message, details
    except ValueError:
        return ErrorCode.INTERNAL, message or f"unknown error code {code}", details
