"""A client connection's life from open to close: the DEALER socket's options, the wait for
the first WELCOME (and token), and the orderly close that fails everything still waiting.

A mixin of :class:`mesh.core.Core`, off the hot path: it runs twice per connection. Kept
apart from the core, which moves messages, because what changes here (socket options, the
order sockets and waiters are torn down in) has nothing to do with moving them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from mesh import batch
from mesh.errors import Closed, Error, Unavailable
from mesh.session import Security, _fail
from mesh.wire import Cmd, pack_route


class Lifecycle:
    """``start`` and ``close``, for :class:`mesh.core.Core`."""

    # provided by Core (and its other mixins)
    endpoint: str
    ctx: zmq.Context[Any]
    security: Security | None
    heartbeat: float
    hwm: int
    loop: asyncio.AbstractEventLoop | None
    sock: zmq.Socket[Any] | None
    connected: bool
    closed: bool
    pending: dict[int, Any]
    subs: Any
    _pauses: set[asyncio.Future[None]]
    _hello_waiters: list[asyncio.Future[None]]
    _last_rx: float
    _monitor: zmq.Socket[Any] | None
    _started: bool
    _timer: asyncio.TimerHandle | None
    _outbox: batch.Outbox
    _direct: Any
    _on_readable: Any
    _tick: Any
    _send_hello: Any  # SessionSide
    _send_outbox: Any  # Outgoing
    _watch_handshake: Any
    _acquire_token: Any  # TokenSide

    async def start(self, timeout: float = 10.0) -> None:
        """Connect and wait for the router's WELCOME; raise Unavailable if none comes."""
        self.loop = asyncio.get_running_loop()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.security is not None:
            self.security.apply(sock)
        if self.security is not None:
            self._watch_handshake(sock)
        sock.connect(self.endpoint)
        self.sock = sock
        self.loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)
        self._last_rx = self.loop.time()
        waiter = self.loop.create_future()
        self._hello_waiters.append(waiter)
        self._send_hello()
        self._timer = self.loop.call_later(min(0.1, self.heartbeat), self._tick)
        try:
            await asyncio.wait_for(waiter, timeout)
            if self.security is not None and not self.security.token:
                await asyncio.wait_for(self._acquire_token(), timeout)
            self._started = True
        except asyncio.TimeoutError:
            await self.close()
            hint = "" if self.security is not None else (
                " (this client has no identity: a secure router answers only CURVE; set "
                "AGP_IDENTITY or pass identity=)")
            raise Unavailable(f"no router answered at {self.endpoint} within {timeout:g}s"
                              + hint) from None
        except Error:
            await self.close()
            raise

    async def close(self, linger: float = 0.5) -> None:
        """Say goodbye, fail whatever is pending with Closed, close the sockets."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for p in self.pending.values():
            _fail(p.waiter, Closed("client closed"))
        self.pending.clear()
        for f in self._pauses:
            _fail(f, Closed("client closed"))
        self.subs.close()
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._monitor is not None and self.loop is not None:
            try:
                self.loop.remove_reader(self._monitor.getsockopt(zmq.FD))
                if self.sock is not None:
                    self.sock.disable_monitor()
            except Exception:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        if self.sock is not None:
            if self.loop is not None:
                try:
                    self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
                except Exception:
                    pass
            if self._outbox:
                self._send_outbox()
            if self.connected:
                try:
                    self.sock.send_multipart([pack_route(Cmd.DISCONNECT), b""], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self.sock.close(linger=int(linger * 1000))
            self.sock = None
        self.connected = False
