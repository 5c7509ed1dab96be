"""The synchronous face of the mesh client: ``with Mesh.connect() as m: m.request(...)``.

It runs an ``AsyncMesh`` on a private event loop in a daemon thread (uvloop when installed)
and hands calls over with ``run_coroutine_threadsafe``. Publishes skip the coroutine: they
go through a lock-free deque and one wake-up per burst, so a tight publish loop costs about
a microsecond per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from mesh import codec, metrics
from mesh.aio import AsyncMesh
from mesh.errors import Closed, ConfigError, DeadlineExceeded, Error, ErrorCode, Overloaded
from mesh.pubsub import Message, Subscription
from mesh.stream import AsyncStream
from mesh.wire import MAX_ADDRESS_BYTES

log = logging.getLogger("agp.client")
T = TypeVar("T")
_PUBQ_HIGH_WATER = 200_000
_ONE, _RAW, _MANY = 0, 1, 2  # a queued publish: one msgpack frame, raw bytes, array frames


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, else the standard loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()


class LoopThread:
    """An event loop running in a daemon thread, stopped and joined by ``stop()``."""

    def __init__(self, name: str = "agp-mesh-io") -> None:
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.get_ident() == self.thread.ident:
            # from a callback on this loop's own thread: waiting here would block the loop
            # that has to produce the result (and its heartbeats) until the timeout
            coro.close()
            raise ConfigError(
                "a blocking Mesh call from a callback on the mesh's own I/O thread would "
                "deadlock; in callbacks use the async face (AsyncMesh) or request_nowait")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the call's own DeadlineExceeded (a TimeoutError too): keep its message
            fut.cancel()
            raise DeadlineExceeded(f"no result within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


class Mesh:
    """A connected mesh client for ordinary (threaded) code."""

    def __init__(self, amesh: AsyncMesh, io: LoopThread) -> None:
        self._amesh = amesh
        self._io = io
        self._pubq: deque[tuple[bytes, Any, int]] = deque()  # (topic, payload, kind)
        self._pub_wake = False
        self._closed = False
        self._warned: set[ErrorCode] = set()  # publish refusals logged at WARNING once

    @classmethod
    def connect(cls, endpoint: str | None = None, *, timeout: float = 10.0,
                **kwargs: Any) -> Mesh:
        """Connect to the router (``AGP_ROUTER`` or the local default when not given)."""
        io = LoopThread()
        try:
            amesh = io.call(AsyncMesh.connect(endpoint, timeout=timeout, **kwargs), timeout + 5)
        except BaseException:
            io.stop()
            raise
        return cls(amesh, io)

    @property
    def core(self) -> Any:
        return self._amesh.core

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, linger: float = 0.5) -> None:
        """Flush publishes, say goodbye, stop the I/O thread; returns within ``linger`` + 5 s."""
        if self._closed:
            return
        self._closed = True
        try:
            self._io.call(self._close_async(linger), linger + 5)
        finally:
            self._io.stop()

    async def _close_async(self, linger: float) -> None:
        self._drain_pubq()
        await self._amesh.core.close(linger)

    def _check(self) -> None:
        if self._closed:
            raise Closed("client closed")

    # ------------------------------------------------------------------ patterns
    def request(self, dest: str, action: str, data: Any = None, *, timeout: float = 10.0,
                **kwargs: Any) -> Any:  # noqa: D417
        """Call ``action`` on ``dest`` and return its reply; see AsyncMesh.request."""
        self._check()
        return self._io.call(self._amesh.request(dest, action, data, timeout=timeout, **kwargs),
                             timeout + 5)

    def send(self, dest: str, action: str, data: Any = None, *, raw: bool = False) -> None:
        """Fire-and-forget to one instance of ``dest``."""
        self._check()
        self._io.call(self._amesh.send(dest, action, data, raw=raw), 10)

    def publish(self, topic: str, data: Any, *, raw: bool = False) -> None:
        """Publish without waiting; ordered, batched under the hood."""
        self._check()
        t = topic.encode()
        if not t or len(t) > MAX_ADDRESS_BYTES:
            raise ConfigError(f"bad topic {topic!r}")
        if raw:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ConfigError("raw=True publishes bytes")
            self._pubq.append((t, bytes(data), _RAW))
        else:  # encoded here: an unencodable value raises to its caller (TypeError)
            frames = codec.encode(data)
            if len(frames) == 1:
                self._pubq.append((t, frames[0], _ONE))
            else:
                self._pubq.append((t, frames, _MANY))
        if not self._pub_wake:
            self._pub_wake = True
            self._io.loop.call_soon_threadsafe(self._drain_pubq)
        if len(self._pubq) > _PUBQ_HIGH_WATER:
            self.flush()

    def _drain_pubq(self) -> None:
        """Hand the queued publishes (encoded by their callers) to the batcher; counted in
        one go when client metrics are on. A publish refused here (its topic forbidden, the
        client overloaded) has no caller left to raise to: it is counted as a drop, as the
        batcher counts one, and the rest go on."""
        self._pub_wake = False
        q = self._pubq
        subs = self._amesh.core.subs
        stats = metrics.CLIENT
        n = nbytes = 0
        first: tuple[bytes, Error] | None = None  # the first publish refused, ...
        n_refused = 0  # ... and how many were
        try:
            while q:
                t, payload, kind = q.popleft()
                try:
                    if kind == _MANY:
                        subs.publish_frames(t, payload, 0)
                    else:
                        subs.publish(t, payload, kind == _RAW)
                except Error as exc:
                    subs.count("publish_dropped", 1)
                    if not isinstance(exc, Overloaded):  # (the rest met a full queue)
                        subs.count(f"publish_dropped_{exc.code.name.lower()}", 1)
                    first = first or (t, exc)
                    n_refused += 1
                    continue
                if stats is not None:
                    n += 1
                    nbytes += metrics.payload_bytes(payload) if kind == _MANY else len(payload)
        finally:
            if n:
                assert stats is not None
                stats.sent("publish", nbytes, n)
            if first is not None:
                self._refused(*first, n_refused)

    def _refused(self, topic: bytes, exc: Error, n: int) -> None:
        """Say why publishes were dropped: at WARNING the first time for each error code
        (a loop publishing to a forbidden topic would fill the log), later at DEBUG."""
        level = logging.DEBUG if exc.code in self._warned else logging.WARNING
        self._warned.add(exc.code)
        log.log(level, "%d publish(es) dropped, the first to %r: %s", n,
                topic.decode(errors="replace"), exc)

    def flush(self, timeout: float = 10.0, *, wait: bool = False) -> None:
        """Hand every publish made so far to the socket; with ``wait``, return once the
        router has taken them all."""

        async def _flush() -> None:
            self._drain_pubq()
            await self._amesh.flush(wait=wait, timeout=timeout)

        self._io.call(_flush(), timeout + 5)

    def subscribe(self, prefix: str, callback: Callable[[Message], Any] | None = None, *,
                  raw: bool = False, timeout: float = 10.0) -> Subscription:
        """Subscribe; returns once confirmed. Iterate it, or pass ``callback`` (run on the
        I/O thread: keep it quick)."""
        self._check()
        return self._io.call(self._amesh.subscribe(prefix, callback, raw=raw, timeout=timeout),
                             timeout + 5)

    def stream(self, dest: str, action: str, params: Any = None, *,
               timeout: float = 600.0, direct: bool | None = None) -> SyncStream:
        """Open a stream: ``with m.stream(svc, action) as s: s.write(chunk)``; then s.result."""
        self._check()
        return SyncStream(self._io, self._amesh.stream(dest, action, params, timeout=timeout,
                                                       direct=direct))


class SyncStream:
    def __init__(self, io: LoopThread, stream: AsyncStream) -> None:
        self._io = io
        self._s = stream

    def __enter__(self) -> SyncStream:
        self._io.call(self._s.open(), self._s.timeout)
        return self

    def write(self, data: Any, *, raw: bool = False) -> None:
        self._io.call(self._s.write(data, raw=raw), self._s.timeout)

    def close(self) -> Any:
        return self._io.call(self._s.close(), self._s.timeout)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._io.loop.call_soon_threadsafe(self._s.abort)

    @property
    def result(self) -> Any:
        return self._s.result
