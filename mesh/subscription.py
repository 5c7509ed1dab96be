"""What a subscriber holds: ``Subscription`` (a bounded queue, an iterator sync or async,
or a callback target, with its counters of what it lost and why) and ``Message``; and the
unbatching of one PUBLISH frame, fed bytes. The socket side is ``mesh.pubsub``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import msgpack

from mesh.errors import Closed, DeadlineExceeded, Error, Malformed

log = logging.getLogger("agp.pubsub")

CLOSE_TIMEOUT = 5.0  # seconds close() from another thread waits for the I/O loop
MAX_BATCH = 4096  # messages per PUBLISH batch (one frame: split in C by msgpack)
MAX_BATCH_BYTES = 256 * 1024


def unbatch(payload: list[bytes], count: int, raw: bool) -> list[Any]:
    """The messages of one batch frame; its count must match the route frame's."""
    if len(payload) != 1 or len(payload[0]) > MAX_BATCH_BYTES * 4:
        raise Malformed("a batch is one frame of bounded size")
    if raw:
        items = msgpack.unpackb(payload[0], max_array_len=MAX_BATCH,
                                max_bin_len=MAX_BATCH_BYTES * 4)
        if not isinstance(items, list) or not all(type(i) is bytes for i in items):
            raise Malformed("a raw batch is an array of byte strings")
    else:
        unpacker = msgpack.Unpacker(None, raw=False, strict_map_key=False,
                                    max_buffer_size=len(payload[0]) + 1,
                                    max_array_len=1_000_000, max_map_len=1_000_000)
        unpacker.feed(payload[0])
        items = []
        for obj in unpacker:
            items.append(obj)
            if len(items) > count:
                break
    if len(items) != count:
        raise Malformed(f"batch holds {len(items)} messages, its header says {count}")
    return items


class Message(NamedTuple):
    topic: str
    data: Any


class Subscription:
    """What ``subscribe()`` returns: an iterator (sync or async) or a callback target.

    Messages wait in a bounded queue; when it is full the oldest are dropped and counted
    in ``dropped`` (a slow consumer loses its own messages, never anyone else's).
    """

    def __init__(self, prefix: bytes, callback: Callable[[Message], Any] | None,
                 maxlen: int, raw: bool) -> None:
        self.prefix = prefix
        self.callback = callback
        self.raw = raw
        self.maxlen = maxlen
        self.queue: deque[Message] = deque()
        self.received = 0
        self.dropped = 0  # dropped from our own queue because the consumer was slow
        self.gaps = 0  # messages the router dropped for us (sequence gaps)
        self.lost = 0  # messages lost on the way that the router could not count (restarts)
        self.callback_errors = 0  # messages whose callback raised (logged, and lost)
        self.refused: dict[str, int] = {}  # sealed messages we could not open, by reason
        self.closed = False
        self.error: Error | None = None
        self._cond = threading.Condition()
        self._async_waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the client's I/O loop
        self._loop_thread: int | None = None  # ... and the thread it runs on
        self._unsubscribe: Callable[[Subscription], None] | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None,
                  unsubscribe: Callable[[Subscription], None]) -> None:
        """Called on the client's loop: the socket and tables ``unsubscribe`` touches are
        that thread's, so ``close()`` from any other thread hands the work over to it."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._unsubscribe = unsubscribe

    # called on the core's loop
    def deliver(self, topic: str, items: list[Any]) -> None:
        self.received += len(items)
        cb = self.callback
        if cb is not None:
            for i, data in enumerate(items):
                if self.closed:  # by a callback (its own or another's) or another thread:
                    self.received -= len(items) - i  # the rest of the batch is not its
                    return
                try:
                    cb(Message(topic, data))
                except Exception:
                    self.callback_errors += 1
                    log.exception("subscription callback raised")
            return
        q = self.queue
        q.extend(Message(topic, d) for d in items)
        over = len(q) - self.maxlen
        if over > 0:
            for _ in range(over):
                q.popleft()
            self.dropped += over
        self._wake()

    def fail(self, exc: Error) -> None:
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        w = self._async_waiter
        if w is not None and not w.done():
            w.set_result(None)
        with self._cond:
            self._cond.notify_all()

    # ---- sync iteration
    def get(self, timeout: float | None = None) -> Message:
        """Next message; raise DeadlineExceeded after ``timeout`` seconds, Closed after close."""
        with self._cond:
            if not self.queue:
                if self.closed:
                    raise Closed("subscription closed")
                self._cond.wait_for(lambda: self.queue or self.closed or self.error, timeout)
            if self.queue:
                return self.queue.popleft()
            if self.error is not None:
                raise self.error
            if self.closed:
                raise Closed("subscription closed")
            raise DeadlineExceeded(f"no message within {timeout}s")

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.get()
            except Closed:
                return

    # ---- async iteration (on the core's loop)
    async def aget(self, timeout: float | None = None) -> Message:
        """Next message; raise DeadlineExceeded after ``timeout`` seconds, Closed after close.
        Several tasks may wait at once (a worker pool): they share one waiter, so a wake
        (a message, close, an error) reaches them all, and ``timeout`` is one deadline."""
        deadline: float | None = None
        while not self.queue:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise Closed("subscription closed")
            loop = asyncio.get_running_loop()
            if deadline is None and timeout is not None:
                deadline = loop.time() + timeout
            w = self._async_waiter
            if w is None or w.done():
                w = self._async_waiter = loop.create_future()
            try:  # shielded: one waiter's timeout or cancel must not cancel the others'
                await asyncio.wait_for(asyncio.shield(w), None if deadline is None
                                       else max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no message within {timeout}s")
        return self.queue.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.aget()
        except Closed:
            raise StopAsyncIteration

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Take no more messages and unsubscribe. Safe from any thread: off the client's
        I/O thread the unsubscribing (its ZeroMQ socket, its tables, an async waiter) runs
        on that loop, and this waits for it at most ``timeout`` seconds."""
        if self.closed:
            return
        self.closed = True  # from here on nothing is delivered to it
        loop = self._loop
        if (loop is None or threading.get_ident() == self._loop_thread
                or not loop.is_running()):
            self._close_here()
            return
        done = threading.Event()

        def run() -> None:
            try:
                self._close_here()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # its loop is closed: the client is gone, its socket with it
            pass
        else:
            deadline = time.monotonic() + timeout
            while not done.wait(0.05):  # bounded; a loop that stopped will never run it
                if not loop.is_running() or time.monotonic() > deadline:
                    break
        if not done.is_set():
            with self._cond:  # a reader blocked in get() learns of the close now
                self._cond.notify_all()
            if loop.is_running():
                log.warning("subscription to %r: the client's I/O loop did not unsubscribe "
                            "within %.1fs; it will when it gets to it", self.prefix, timeout)

    def _close_here(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe(self)
        self._wake()
