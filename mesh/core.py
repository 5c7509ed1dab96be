"""The client core: one DEALER connection to the router and one SUB socket, on one asyncio loop.

Both facades (``mesh.aio.AsyncMesh`` on the caller's loop, ``mesh.sync.Mesh`` on a private
loop thread) drive this class; agents use it too. It never awaits per message: the socket's
file descriptor is watched with ``add_reader`` and every ready message is drained in one
callback. libzmq's FD is edge-triggered, so after sending we look at ``EVENTS`` again and
drain whatever arrived meanwhile.

The core keeps the session alive on its own: it says HELLO, heartbeats, notices a silent
router, says HELLO again to a restarted one (re-sending requests the new router refused as
UNKNOWN_SESSION, and failing with ``Unavailable`` those the old router took with it), and
lets an agent re-announce itself through ``on_session``. Its mixins hold what is off the
per-message path: sending and coalescing (``mesh.outgoing``), the session and its token
(``mesh.session``, ``mesh.token_side``), opening and closing (``mesh.lifecycle``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

import zmq

from mesh import batch
from mesh.errors import Closed, DeadlineExceeded, Error, TooLarge
from mesh.lifecycle import Lifecycle
from mesh.outgoing import Outgoing
from mesh.pubsub import SubscriberSide
from mesh.session import Security, SessionSide, _fail, _resolve
from mesh.token_side import TokenSide
from mesh.wire import HEARTBEAT_FRAME, MAX_TIMEOUT_MS, ROUTE, Cmd, Flag, pack_route, parse_route
from mesh.zmqio import readable, recv_frames
from proto import agp_pb2

log = logging.getLogger("agp.client")

_REPLY, _ERROR, _HEARTBEAT, _BATCH = Cmd.REPLY, Cmd.ERROR, Cmd.HEARTBEAT, Cmd.BATCH
_INBOUND = frozenset({Cmd.REQUEST, Cmd.SEND, Cmd.STREAM_OPEN, Cmd.STREAM_DATA, Cmd.STREAM_END,
                      Cmd.CANCEL})
DRAIN_BATCH = 1000
NO_LIMIT = 1 << 62  # the size past which a request is refused here, before any WELCOME


class Pending:
    """A request waiting for its reply. ``waiter`` has set_result/set_exception.

    ``hellos`` is how many HELLOs this connection had sent when the request was: a router
    that answers a later HELLO cannot have it (it died with the one before), one that
    answers an earlier or that same HELLO got it behind the HELLO. ``instance`` is who
    spoke for it (progress, a stream's credit): a stream with one was opened."""

    __slots__ = ("waiter", "frames", "deadline", "on_progress", "instance", "hellos")

    def __init__(self, waiter: Any, frames: list[Any], deadline: float, hellos: int,
                 on_progress: Callable[[bytes, list[bytes]], None] | None = None) -> None:
        self.waiter = waiter
        self.frames = frames
        self.deadline = deadline
        self.hellos = hellos
        self.on_progress = on_progress
        self.instance = b""


class Core(Outgoing, SessionSide, TokenSide, Lifecycle):
    def __init__(
        self,
        endpoint: str,
        *,
        name: str = "",
        kind: int = agp_pb2.CLIENT,
        context: zmq.Context[Any] | None = None,
        security: Security | None = None,
        heartbeat: float = 1.0,
        liveness: float = 3.0,
        hwm: int = 100_000,
        sub_queue: int = 100_000,
    ) -> None:
        self.endpoint = endpoint
        self.name = name or f"client-{os.getpid()}-{secrets.token_hex(3)}"
        self.kind = kind
        self.ctx = context or zmq.Context.instance()
        self.security = security
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.hwm = hwm
        self.sub_queue = sub_queue
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.welcome: agp_pb2.Welcome | None = None
        self.router_id = ""
        self.epoch = 0  # bumps on every new router session
        self.connected = False
        self.closed = False
        self.pending: dict[int, Pending] = {}
        self._deadlines: list[tuple[float, int]] = []
        # past it a request surely meets TOO_LARGE: twice the router's limit (WELCOME), where
        # libzmq cuts a connection that carries a frame that large (router MAXMSGSIZE)
        self.max_send = NO_LIMIT
        self._pauses: set[asyncio.Future[None]] = set()  # retries waiting out their backoff
        self._ids = itertools.count(1)
        self._resend: list[int] = []
        self._hello_waiters: list[asyncio.Future[None]] = []
        self._hello_sent_at = -1e9
        self._hello_ids: dict[int, int] = {}  # recent HELLOs: id -> number (1, 2, ...)
        self._hellos = 0  # HELLOs sent on this connection
        self._live_hellos: set[int] = set()  # HELLOs sent on a live session (token refresh)
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._sent = False
        self._refreshing = False  # a token fetch or refresh runs
        self._token_refused = False  # the router refused the provider's token: ask again
        self._token_attempts = 0  # failed token fetches (or provider asks) in a row ...
        self._token_retry_at = 0.0  # ... and the loop time before which none is tried
        self._monitor: zmq.Socket[Any] | None = None
        self.auth_failed = False
        self._started = False
        self._timer: asyncio.TimerHandle | None = None
        self._drain_scheduled = False
        self.batching = False  # both sides take BATCH (said on HELLO and WELCOME)
        self._outbox = batch.Outbox()  # messages for the next flush (one peer: the router)
        self._coalescing = False  # this turn has sent: what follows waits for its end
        self._turn_ending = False  # an _end_turn is scheduled
        self.on_unsent: Callable[[list[Any]], None] | None = None  # a queued message failed
        self.on_inbound: Callable[[int, int, int, int, list[bytes]], None] | None = None
        self.on_session: Callable[[], None] | None = None  # after each WELCOME (agents: READY)
        # (service): an instance of it refused a sealed send that was not sealed for its key
        self.on_send_refused: Callable[[str], None] | None = None
        self.stream_acks: dict[int, Callable[[int, list[bytes]], None]] = {}
        self._direct: Any = None  # mesh.direct.DirectLinks, made by the first direct stream
        self.subs = SubscriberSide(self)
        self.counters: dict[str, int] = {"late_replies": 0, "malformed": 0, "send_errors": 0}

    # ------------------------------------------------------------------ direct links
    def direct_links(self) -> Any:
        """This client's peer-to-peer stream connections (mesh.direct.DirectLinks)."""
        if self._direct is None:
            from mesh.direct import DirectLinks

            assert self.loop is not None
            sec = self.security
            self._direct = DirectLinks(self.loop, (sec.public, sec.secret) if sec else None,
                                       self.counters)
        return self._direct

    # ------------------------------------------------------------------ sending
    def next_id(self) -> int:
        return next(self._ids)

    def start_request(
        self,
        cmd: int,
        dest: bytes,
        header: bytes,
        payload: list[Any],
        waiter: Any,
        *,
        flags: int = 0,
        timeout: float = 10.0,
        on_progress: Callable[[bytes, list[bytes]], None] | None = None,
        ident: int | None = None,
    ) -> int:
        """Send a REQUEST (or STREAM_OPEN) and register ``waiter`` for its reply frames;
        one the router would surely refuse as too large fails ``waiter`` with TooLarge
        unsent (a frame that large would cut the connection, and every call on it)."""
        if ident is None:
            ident = next(self._ids)
        refused = self.oversize(header, payload)
        if refused is not None:
            _fail(waiter, refused)
            return ident
        # (the wire's longest deadline: past it the router would take its default, 30 s,
        # and past 2**32 ms the route frame cannot carry it)
        timeout_ms = min(MAX_TIMEOUT_MS, max(1, int(timeout * 1000)))
        frames = [pack_route(cmd, flags, 0, timeout_ms, ident), dest, header, *payload]
        assert self.loop is not None
        deadline = self.loop.time() + timeout
        self.pending[ident] = Pending(waiter, frames, deadline, self._hellos, on_progress)
        heapq.heappush(self._deadlines, (deadline, ident))
        try:
            self.queue_frames(frames)
        except Error as exc:
            self.pending.pop(ident, None)
            _fail(waiter, exc)
        return ident

    def oversize(self, header: bytes, payload: list[Any]) -> TooLarge | None:
        """The refusal (counted) of a message the router would surely refuse as too large,
        past :attr:`max_send`, so it is not sent: one frame that large cuts the connection,
        and every call on it. None for any other."""
        size = len(header) + (len(payload[0]) if len(payload) == 1
                              else sum(map(len, payload)))
        if size <= self.max_send:
            return None
        self._count("refused_too_large")
        return TooLarge(f"message of {size} bytes not sent: the router takes at most "
                        f"{self.max_send // 2}")

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds (a retry's backoff); raise Closed at once if the client
        closes meanwhile, instead of waking a retry on a closed client (or, on the sync
        face, never: its loop stops, and its caller would wait out its whole timeout)."""
        if self.closed:
            raise Closed("client closed")
        assert self.loop is not None
        fut = self.loop.create_future()
        timer = self.loop.call_later(delay, _resolve, fut, None)
        self._pauses.add(fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._pauses.discard(fut)

    def cancel_request(self, ident: int) -> None:
        """Forget a request (its caller gave up) and tell its instance to stop: the one that
        spoke for it, else the address it was sent to (the router finds the call there)."""
        p = self.pending.pop(ident, None)
        if p is not None and self.sock is not None:
            if self._outbox:
                self._send_outbox()  # what was queued before goes first
            try:
                self.sock.send_multipart([pack_route(Cmd.CANCEL, 0, 0, 0, ident),
                                          p.instance or p.frames[1]], zmq.NOBLOCK)
            except zmq.ZMQError:  # (the instance works on until the call's deadline)
                self.counters["send_errors"] += 1

    # ------------------------------------------------------------------ receiving
    def _on_readable(self) -> None:
        self._drain_scheduled = False
        sock = self.sock
        if sock is None:
            return
        dispatch = self._dispatch
        assert self.loop is not None
        self._last_rx = self.loop.time()
        # what this drain answers (an agent's replies) leaves together when it ends, as the
        # router's does: a batch of requests costs one send back, not "the first, then the rest"
        holding = False
        try:
            for i in range(DRAIN_BATCH):
                try:
                    msg = recv_frames(sock)
                except zmq.ZMQError:  # zmq.Again: drained
                    return
                if not holding and self.batching and not self._coalescing:
                    holding = self._coalescing = True  # (batching may begin mid-drain)
                try:
                    dispatch(msg)
                except Exception:
                    self.counters["malformed"] += 1
                    log.debug("message dropped", exc_info=True)
                if self.sock is not sock:
                    return  # closed meanwhile
                if not i and not readable(sock):
                    return  # most drains hold one message (or one batch): a look at EVENTS
                    # (~1.5 us) ends them cheaper than the recv raising zmq.Again (~4 us)
            self._schedule_drain(force=True)
        finally:
            if holding:
                self.flush()

    def _schedule_drain(self, force: bool = False) -> None:
        sock = self.sock
        if self._drain_scheduled or sock is None or self.loop is None:
            return
        if force or readable(sock):
            self._drain_scheduled = True
            self.loop.call_soon(self._on_readable)

    def _dispatch(self, msg: list[bytes]) -> None:
        rf = msg[0]
        if len(rf) != 16:
            self.counters["malformed"] += 1
            return
        _, cmd, flags, code, value, ident = ROUTE.unpack(rf)
        if cmd == _REPLY:
            p = self.pending.pop(ident, None)
            if p is None:
                self.counters["late_replies"] += 1
                return
            _resolve(p.waiter, msg)
        elif cmd == _BATCH:
            if len(msg) != 2:
                self.counters["malformed"] += 1
                return
            dispatch = self._dispatch
            for sub in batch.unpack(msg[1], value):
                if len(sub[0]) == 16 and sub[0][1] != _BATCH:
                    try:  # each message on its own, as if it came alone: one that raises
                        dispatch(sub)  # (a bad frame, a callback's bug) drops only itself
                    except Exception:
                        self.counters["malformed"] += 1
                        log.debug("message in a batch dropped", exc_info=True)
                else:
                    self.counters["malformed"] += 1
        elif cmd in _INBOUND:
            if self.on_inbound is not None:
                self.on_inbound(cmd, flags, value, ident, msg)
        elif cmd == _ERROR:
            self._on_error(parse_route(rf), msg, ident)
        elif cmd == _HEARTBEAT:
            return
        elif cmd == Cmd.STREAM_CREDIT:
            ack = self.stream_acks.get(ident)
            if ack is None:
                self._count("late_credits")  # the stream ended or was given up meanwhile
                return
            p = self.pending.get(ident)
            if p is not None and len(msg) > 1:
                p.instance = msg[1]
            ack(value, msg)
        elif cmd == Cmd.PROGRESS:
            p = self.pending.get(ident)
            if p is None:
                self._count("late_progress")
                return
            p.instance = msg[1] if len(msg) > 1 else b""
            if p.on_progress is not None:
                p.on_progress(p.instance, msg)
        elif cmd == Cmd.WELCOME:
            self._on_welcome(msg, ident)
        elif cmd == Cmd.READY:
            p = self.pending.pop(ident, None)
            if p is None:
                self._count("late_replies")
                return
            _resolve(p.waiter, msg)
        elif cmd == Cmd.DISCONNECT:
            log.info("router said goodbye; waiting for it to come back")
            self.connected = False

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    # ------------------------------------------------------------------ housekeeping
    def _tick(self) -> None:
        if self.closed or self.loop is None:
            return
        now = self.loop.time()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, ident = heapq.heappop(dl)
            p = self.pending.get(ident)
            if p is not None and p.deadline <= now:
                del self.pending[ident]
                _fail(p.waiter, DeadlineExceeded("no reply before the deadline"))
        if len(dl) > 4 * len(self.pending) + 1024:
            self._deadlines = [(p.deadline, i) for i, p in self.pending.items()]
            heapq.heapify(self._deadlines)
        if not self.connected and now - self._hello_sent_at >= self.heartbeat:
            self._send_hello()
        elif now - self._last_tx >= self.heartbeat and self.sock is not None and not self._sent:
            try:
                self.sock.send_multipart([HEARTBEAT_FRAME], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._last_tx = now
        if self._sent:
            self._sent = False
            self._last_tx = now
        if self.connected and now - self._last_rx > self.liveness:
            log.warning("router silent for %.1fs; waiting for it", now - self._last_rx)
            self.connected = False
        self.subs.tick(now)
        self._maybe_refresh(now)
        self._schedule_drain()
        self._timer = self.loop.call_later(0.1, self._tick)


_RAW, _IDEMPOTENT = int(Flag.RAW), int(Flag.IDEMPOTENT)


def flags_for(raw: bool, idempotent: bool) -> int:
    """Route flags as a plain int (IntFlag arithmetic costs ~0.5 us an operation)."""
    return (_RAW if raw else 0) | (_IDEMPOTENT if idempotent else 0)
