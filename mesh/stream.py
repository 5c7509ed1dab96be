"""Client side of a stream: open, write under credit, end, and get the service's result.

The receiving agent grants credits (chunks it is ready to take); ``write`` waits when none
are left, so a fast producer can never overrun a slow consumer and memory on both sides
stays bounded by the window whatever the stream's length.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mesh import codec
from mesh.errors import Closed, Error
from mesh.wire import Cmd, Flag, pack_route

if TYPE_CHECKING:
    from mesh.core import Core


class AsyncStream:
    def __init__(self, core: Core, address: bytes, header: bytes, params: Any,
                 timeout: float) -> None:
        self.core = core
        self.address = address
        self.header = header
        self.params = params
        self.timeout = timeout
        self.ident = 0
        self.credits = 0
        self.sent = 0
        self.bytes_sent = 0
        self.instance = b""
        self._waiter: asyncio.Future[Any] | None = None
        self._credit_event = asyncio.Event()
        self._ended = False
        self._result: Any = None

    def _on_credit(self, n: int) -> None:
        self.credits += n
        self._credit_event.set()

    async def open(self) -> AsyncStream:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self.ident = self.core.next_id()
        self.core.stream_acks[self.ident] = self._on_credit
        self.core.start_request(Cmd.STREAM_OPEN, self.address, self.header,
                                codec.encode(self.params), self._waiter,
                                timeout=self.timeout, ident=self.ident)
        await self._wait_credit()
        p = self.core.pending.get(self.ident)
        self.instance = p.instance if p is not None else b""
        return self

    async def _wait_credit(self) -> None:
        assert self._waiter is not None
        while self.credits <= 0:
            if self._waiter.done():
                self._finish()
                self._waiter.result()  # raises the stream's error
                raise Closed("stream ended by the service")
            self._credit_event.clear()
            credit = asyncio.ensure_future(self._credit_event.wait())
            done, _ = await asyncio.wait({credit, self._waiter},
                                         return_when=asyncio.FIRST_COMPLETED)
            if credit not in done:
                credit.cancel()

    async def write(self, data: Any, *, raw: bool = False) -> None:
        """Send one chunk, waiting for credit first."""
        if self._ended:
            raise Closed("stream already ended")
        if self.credits <= 0:
            await self._wait_credit()
        self.credits -= 1
        payload = [data] if raw else codec.encode(data)
        frames = [pack_route(Cmd.STREAM_DATA, Flag.RAW if raw else 0, 0, 0, self.ident), b"",
                  b"", *payload]
        self.core.send_frames(frames)
        self.sent += 1
        if raw:
            self.bytes_sent += len(data)

    async def close(self) -> Any:
        """End the stream and return the service's result."""
        if self._ended:
            return self._result
        self._ended = True
        assert self._waiter is not None
        try:
            self.core.send_frames([pack_route(Cmd.STREAM_END, 0, 0, 0, self.ident), b"", b""])
            msg = await self._waiter
        finally:
            self._finish()
        from mesh.aio import decode_reply

        self._result = decode_reply(msg)
        return self._result

    def abort(self) -> None:
        """Give up: the service's handler is cancelled."""
        if not self._ended:
            self._ended = True
            try:
                self.core.send_frames([pack_route(Cmd.CANCEL, 0, 0, 0, self.ident),
                                       self.instance])
            except Error:
                pass
            self.core.cancel_request(self.ident)
            self._finish()

    def _finish(self) -> None:
        self.core.stream_acks.pop(self.ident, None)

    async def __aenter__(self) -> AsyncStream:
        return await self.open()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.abort()

    @property
    def result(self) -> Any:
        return self._result
