"""Coalescing small messages into one frame (the BATCH command), sans-IO.

Every ZeroMQ frame costs its own CURVE box in libzmq's I/O thread and its own send or
receive call in Python, whatever its size: a request crosses three processes as four
messages of four frames each. Under load many messages to the same peer are ready in the
same turn of a loop, so they leave as one BATCH message instead:

    route frame (cmd BATCH, value = message count) | body

The body is the messages one after the other, each as ``u16 frame count``, that many
``u32`` frame lengths (little-endian), then the frames. A message travels alone when it is
the only one ready, when it is large (``BATCHABLE_BYTES``) or has many frames, so
large payloads keep zero-copy and a single request pays nothing for batching. Batching is
under the hood: every message inside is handled, counted and answered as if it had come
alone, and peers use it only after both said they take it (``Flag.BATCH`` on HELLO and
WELCOME).

Nothing here touches a socket: :class:`Outbox` collects, :func:`pack` and :func:`unpack`
turn messages into a body and back, with a cap on every count and length.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any, Final

from mesh.errors import Malformed
from mesh.wire import Cmd, pack_route

__all__ = ["BATCHABLE_BYTES", "ENABLED", "FLUSH_AT", "MAX_BATCH_BYTES", "MAX_BATCH_MESSAGES",
           "Outbox", "batchable", "pack", "route_frame", "unpack", "wire"]

MAX_BATCH_MESSAGES: Final = 1024  # messages in one batch, at most (a receiver refuses more)
MAX_BATCH_BYTES: Final = 256 * 1024  # an outbox flushes a destination at this size
# a sender flushes a peer's batch at this many messages: larger batches cost less each, but
# past this the three processes of a request take turns instead of working side by side
# (measured here with 100 requests in flight: 16, 32 and 48 about equal, 8 and 64 worse)
FLUSH_AT: Final = 32
ENABLED: Final = os.environ.get("AGP_BATCH", "1") != "0"  # AGP_BATCH=0: every message alone
BATCHABLE_BYTES: Final = 16 * 1024  # a larger message travels alone, without a copy
MAX_BATCHED_FRAMES: Final = 16  # frames of one message inside a batch
_LENGTHS: Final = [struct.Struct(f"<H{n}I") for n in range(MAX_BATCHED_FRAMES + 1)]
_BATCH: Final = int(Cmd.BATCH)


def route_frame(count: int) -> bytes:
    """The route frame of a batch of ``count`` messages."""
    return pack_route(_BATCH, 0, 0, count, 0)


def batchable(frames: list[Any], skip: int = 0) -> int:
    """The size of ``frames[skip:]`` if it may travel inside a batch, else -1 (too large, too
    many frames, or frames that are not plain bytes, such as numpy buffers sent zero-copy)."""
    if len(frames) - skip > MAX_BATCHED_FRAMES:
        return -1
    size = 0
    for i in range(skip, len(frames)):
        f = frames[i]
        t = type(f)
        if t is not bytes and t is not bytearray:
            return -1
        size += len(f)
    return size if size <= BATCHABLE_BYTES else -1


def pack(messages: list[list[Any]], skip: int = 0) -> bytes:
    """The body of a batch of ``messages``, each without its first ``skip`` frames (the
    router's routing id); each must be batchable (see :func:`batchable`)."""
    parts: list[Any] = []
    append, extend = parts.append, parts.extend
    for frames in messages:
        if skip:
            frames = frames[skip:]
        n = len(frames)
        append(_LENGTHS[n].pack(n, *map(len, frames)))
        extend(frames)
    return b"".join(parts)


def wire(messages: list[list[Any]], skip: int = 0) -> list[Any]:
    """The frames that carry ``messages`` (all for one peer, batchable, in order): one message
    as itself, several as a BATCH; the first ``skip`` frames (the router's routing id) lead."""
    if len(messages) == 1:
        return messages[0]
    return [*messages[0][:skip], route_frame(len(messages)), pack(messages, skip)]


def unpack(body: bytes, count: int) -> list[list[bytes]]:
    """The ``count`` messages of a batch body; Malformed unless the body holds exactly them."""
    if not 2 <= count <= MAX_BATCH_MESSAGES:
        raise Malformed(f"a batch holds 2 to {MAX_BATCH_MESSAGES} messages, not {count}")
    out: list[list[bytes]] = []
    pos, end = 0, len(body)
    try:
        for _ in range(count):
            n = body[pos] | (body[pos + 1] << 8)
            if not 1 <= n <= MAX_BATCHED_FRAMES:
                raise Malformed(f"a batched message has 1 to {MAX_BATCHED_FRAMES} frames")
            lengths = _LENGTHS[n].unpack_from(body, pos)
            pos += 2 + 4 * n
            frames = []
            for i in range(1, n + 1):
                stop = pos + lengths[i]
                frames.append(body[pos:stop])
                pos = stop
            out.append(frames)
    except (IndexError, struct.error):
        raise Malformed("batch body shorter than its lengths say") from None
    if pos != end:
        raise Malformed("batch body longer or shorter than its messages")
    return out


class Outbox:
    """Messages waiting for the next flush, per destination, in the order they were given.

    ``add`` says when a destination's share reached ``FLUSH_AT`` messages or
    ``MAX_BATCH_BYTES``: the caller flushes it then, so no batch exceeds the receiver's caps.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        # destination -> [messages, bytes]
        self._pending: dict[Any, list[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        return sum(len(p[0]) for p in self._pending.values())

    def add(self, dest: Any, frames: list[Any], size: int) -> bool:
        """Queue ``frames`` (of ``size`` bytes) for ``dest``; True when it should flush now."""
        p = self._pending.get(dest)
        if p is None:
            self._pending[dest] = [[frames], size]
            return False
        p[0].append(frames)
        p[1] += size
        return len(p[0]) >= FLUSH_AT or p[1] >= MAX_BATCH_BYTES

    def take(self, dest: Any) -> list[list[Any]]:
        """Everything waiting for ``dest`` (and forget it)."""
        p = self._pending.pop(dest, None)
        return p[0] if p is not None else []

    def holds(self, dest: Any) -> bool:
        return dest in self._pending

    def take_all(self) -> Iterator[tuple[Any, list[list[Any]]]]:
        """Every destination's messages, emptying the outbox."""
        pending, self._pending = self._pending, {}
        for dest, p in pending.items():
            yield dest, p[0]
