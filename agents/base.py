"""The Agent base class: a standalone process that serves actions on the mesh.

Writing an agent::

    class Echo(Agent):
        name = "echo"

        @action()
        def shout(self, data, ctx):
            return str(data).upper()

    if __name__ == "__main__":
        Echo.main()

Lifecycle: connect (HELLO), announce (READY with service, capacity, weight), serve, and on
SIGTERM drain: tell the router to send nothing new, finish what is in flight, say goodbye.
After a router restart the agent announces itself again on its own.

Handlers: ``async def`` handlers run as tasks; plain functions run in a thread pool of
``capacity`` workers (so a long scikit-learn fit never stalls heartbeats), or on the loop
itself with ``@action(inline=True)`` for tiny handlers where a thread hop costs more than the
work. A handler's exception becomes a HANDLER_ERROR reply (a poison input fails that call,
not the agent). ``ctx.progress()`` reports progress to the caller and raises ``Cancelled``
once the caller cancelled: progress reports double as the cancel channel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from google.protobuf.message import DecodeError

from agents.calls import Calls
from agents.context import Context, action
from agents.presence import Presence
from agents.stream_in import StreamIn, accept
from mesh import codec, metrics, telemetry
from mesh.core import Core
from mesh.errors import Closed, Error, ErrorCode, Unauthenticated
from mesh.wire import Cmd, Flag, error_frames, pack_route
from proto import agp_pb2

__all__ = ["Agent", "Context", "StreamIn", "action"]

log = logging.getLogger("agp.agent")

_PATTERNS = {Cmd.REQUEST: "request", Cmd.SEND: "send", Cmd.STREAM_OPEN: "stream"}
_EMPTY_ENVELOPE = agp_pb2.Envelope()
STREAM_WINDOW = 16
# plain ints on the per-message path: IntFlag arithmetic builds an enum per operation
_ENCRYPTED, _RAW = int(Flag.ENCRYPTED), int(Flag.RAW)
_STREAM_DATA, _STREAM_END, _STREAM_OPEN = int(Cmd.STREAM_DATA), int(Cmd.STREAM_END), int(
    Cmd.STREAM_OPEN)


class Agent(Presence, Calls):
    """Subclass, set ``name`` and mark handlers with ``@action``."""

    name: str = ""
    namespace: str = "agp/local"
    capacity: int = 4
    weight: int = 1
    policy: str = "weighted_round_robin"
    version: str = "1"
    capabilities: tuple[str, ...] = ()
    drain_timeout: float = 30.0  # seconds a stop waits for handlers in flight
    register_with_registry: bool = True  # lease in agp/system/registry when one runs
    require_e2e: bool = False  # refuse payloads that are not sealed end to end
    plain_actions: frozenset[str] = frozenset()  # actions served without sealing anyway
    direct_streams: bool = True  # offer streams a peer-to-peer path (AGP_DIRECT_STREAMS=0: no)

    _actions: dict[str, tuple[Callable[..., Any], bool, bool]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, tuple[Callable[..., Any], bool, bool]] = {}
        for klass in reversed(cls.__mro__):
            for attr_name, attr in vars(klass).items():
                spec = getattr(attr, "_agp_action", None)
                if spec is not None:
                    if klass not in _AGENT_MRO and any(attr_name in vars(base)
                                                       for base in _AGENT_MRO):
                        raise TypeError(f"{cls.__name__}.{attr_name} would replace "
                                        f"Agent.{attr_name}: name the method otherwise and "
                                        f"use @action(name={spec[0]!r})")
                    found[spec[0]] = (attr, spec[1], spec[2])
        cls._actions = found

    def __init__(self, *, endpoint: str | None = None, namespace: str | None = None,
                 name: str | None = None, instance: str | None = None,
                 capacity: int | None = None, weight: int | None = None,
                 policy: str | None = None, security: Any = None,
                 labels: dict[str, str] | None = None) -> None:
        from mesh.aio import resolve_endpoint

        self.endpoint = resolve_endpoint(endpoint)
        self.namespace = namespace or self.namespace
        self.name = name or self.name or type(self).__name__.lower()
        self.service = f"{self.namespace}/{self.name}"
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"[:64].replace("/", "-")
        self.capacity = capacity or self.capacity
        self.weight = weight or self.weight
        self.policy = policy or self.policy
        self.security = security
        self.labels = dict(labels or {})
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1  # threading.get_ident() of the loop's thread, once started
        self.core: Core | None = None
        self.draining = False
        self.served = 0
        self.failed = 0
        self.dropped: dict[str, int] = {}
        self.left_running = 0  # handlers still running when the drain's time ran out
        self.metrics: metrics.AgentStats | None = None  # set by metrics.agent_metrics(self)
        self._tasks: dict[tuple[bytes, int], tuple[asyncio.Task[Any] | None, Context]] = {}
        self._streams: dict[tuple[bytes, int], StreamIn] = {}
        self._idem: OrderedDict[Hashable, list[Any]] = OrderedDict()
        self._idem_bytes = 0
        self._running: dict[Hashable, Any] = {}  # keyed calls running here (agents.retries)
        self._envelopes: dict[bytes, agp_pb2.Envelope] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.capacity, thread_name_prefix=f"agp-{self.name}")
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[str] | None = None
        self.instance_name = ""
        self._registry_task: asyncio.Task[None] | None = None
        self.boxes: Any = None  # security.payload.PayloadBoxes on a secure mesh
        self.direct: Any = None  # mesh.direct.DirectServer when streams may go peer to peer
        self.registered = False
        self._mesh: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, timeout: float = 30.0) -> None:
        """Connect and announce; returns once the router accepted the READY."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        core = Core(self.endpoint, name=self.service, kind=agp_pb2.AGENT,
                    security=self.security)
        core.on_inbound = self._on_inbound
        core.on_session = self._on_session
        core.on_unsent = lambda _frames: self._count_drop("reply_unsent")
        self.core = core
        self._ready = self.loop.create_future()
        if self.security is not None:
            from security.keys import KeyPair
            from security.payload import PayloadBoxes

            self.boxes = PayloadBoxes(KeyPair(self.security.public, self.security.secret))
        await core.start(timeout)
        self._start_direct()
        self.instance_name = await asyncio.wait_for(self._ready, timeout)
        await self.on_start()

    def _start_direct(self) -> None:
        if not self.direct_streams or os.environ.get("AGP_DIRECT_STREAMS", "1") in ("0", ""):
            return
        from mesh.direct import DirectServer

        assert self.loop is not None
        sec = self.security
        try:
            self.direct = DirectServer(self.loop, self.endpoint,
                                       keypair=(sec.public, sec.secret) if sec else None)
        except Exception as exc:  # streams still work through the router
            log.warning("no direct stream path (%s); streams go through the router", exc)

    async def on_start(self) -> None:
        """Hook: runs once the agent is registered."""

    async def on_stop(self) -> None:
        """Hook: runs after draining, before the connection closes."""

    @property
    def mesh(self) -> Any:
        """An AsyncMesh over this agent's own connection, to call other agents. With
        ``AGP_E2E=1`` it seals like an e2e client (and opens sealed topics), except in the
        system services (``agp/system``), whose own traffic bootstraps the keys."""
        if self._mesh is None:
            from mesh.aio import AsyncMesh

            assert self.core is not None
            e2e = self.boxes if (os.environ.get("AGP_E2E", "") not in ("", "0")
                                 and not self.service.startswith("agp/system/")) else None
            self._mesh = AsyncMesh(self.core, breakers=True, e2e=e2e)
            if e2e is not None:
                from security.topic_key_client import TopicKeyClient

                self.core.subs.crypto = TopicKeyClient(self._mesh)
        return self._mesh

    async def serve(self) -> None:
        """Run until stop() or drain(), then close."""
        await self._stop.wait()
        await self._shutdown(self.drain_timeout)

    def stop(self) -> None:
        """Begin a graceful stop (drain, then close). Safe from signal handlers."""
        self._stop.set()

    async def run(self, ready: Callable[[Agent], Any] | None = None) -> None:
        await self.start()
        if ready is not None:
            ready(self)
        await self.serve()

    async def _shutdown(self, drain_timeout: float = 30.0) -> None:
        core = self.core
        if core is None:
            return
        self.draining = True
        try:
            core.send_frames([pack_route(Cmd.DISCONNECT, 0, ErrorCode.DRAINING), b""])
        except Error:
            pass
        if self._registry_task is not None:
            self._registry_task.cancel()
            if self.registered:
                from discovery.service import REGISTRY_SERVICE

                try:
                    await self.mesh.request(REGISTRY_SERVICE, "deregister",
                                            {"name": self.service, "instance": self.instance,
                                             "public_key": self.public_key}, timeout=1.0)
                except Error:
                    pass
        # (threads cannot be stopped, past their deadlines neither: the runner leaves them)
        self.left_running = await self._drain_calls(drain_timeout) + self.overrunning
        await self.on_stop()
        if core.subs.crypto is not None:
            core.subs.crypto.close()
        if self.direct is not None:
            self.direct.close()
            self.direct = None
        await core.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ inbound
    def _on_inbound(self, cmd: int, flags: int, value: int, ident: int, msg: list[bytes]) -> None:
        crid = msg[1]
        if cmd == _STREAM_DATA or cmd == _STREAM_END:
            st = self._streams.get((crid, ident))
            if st is None:  # (it ended, was cancelled or refused: its caller knows)
                self._count_drop("stream_unknown")
            elif cmd == _STREAM_DATA:
                st.push(msg)
            else:
                st.end()
            return
        if cmd == Cmd.CANCEL:
            entry = self._tasks.get((crid, ident))
            if entry is not None:
                task, ctx = entry
                ctx.cancel()
                if task is not None:
                    task.cancel()
                    self.loop.call_soon(self._answer_if_never_ran, task, ctx)
            st = self._streams.pop((crid, ident), None)
            if st is not None:
                st.end()
                st.close()
            return
        reply = cmd != Cmd.SEND
        if self.metrics is not None:
            self.metrics.inbound(_PATTERNS.get(cmd, "other"), metrics.payload_bytes(msg[3:]))
        if self.draining:
            self._count_drop("draining")
            if reply:
                self._error(crid, ident, ErrorCode.DRAINING, "agent is draining")
            return
        header = msg[2]
        env = self._envelopes.get(header)
        nonce = None
        if env is None:
            try:
                if flags & _ENCRYPTED:
                    env, nonce = self._sealed_envelope(header)
                else:
                    env = agp_pb2.Envelope.FromString(header) if header else _EMPTY_ENVELOPE
                    # the same action from the same client; a header with a trace context
                    # or an idempotency key is single-use and would only fill the cache
                    if (len(self._envelopes) < 4096 and not env.traceparent
                            and not env.idempotency_key):
                        self._envelopes[header] = env
            except DecodeError:
                self._count_drop("malformed_envelope")
                if reply:  # answered, so the call ends now and its slot here is freed
                    self._error(crid, ident, ErrorCode.MALFORMED, "undecodable envelope")
                return
        spec = self._actions.get(env.action)
        if spec is None:
            self._count_drop("no_such_action")
            if reply:
                self._error(crid, ident, ErrorCode.NO_SUCH_ACTION,
                            f"{self.service} has no action {env.action!r}")
            return
        fn, is_stream, inline = spec
        if cmd == _STREAM_OPEN and not is_stream or cmd != _STREAM_OPEN and is_stream:
            self._count_drop("stream_action_mismatch")
            if reply:
                self._error(crid, ident, ErrorCode.NO_SUCH_ACTION,
                            f"action {env.action!r} is {'' if is_stream else 'not '}a stream")
            return
        assert self.loop is not None
        deadline = self.loop.time() + (value / 1000.0 if value else 30.0)
        ctx = Context(self, crid, ident, env.action, deadline, env)
        if telemetry.ENABLED:
            ctx.span = telemetry.start_server_span(self.service, env.action, env.traceparent,
                                                   self.instance_name)
        if self.metrics is not None:
            ctx.started = self.loop.time()
        try:
            payload = msg[3:]
            if flags & _ENCRYPTED:
                payload, ctx.reply_key = self._open_payload(
                    env, ident, payload, env.nonce if nonce is None else nonce)
                ctx.reply_to = env.sender_key
            elif self.require_e2e and env.action not in self.plain_actions:
                raise Unauthenticated("this agent takes sealed payloads only")
            data = (payload[0] if payload else b"") if flags & _RAW else (
                codec.decode(payload) if payload and payload != [b""] else None)
            if reply and env.idempotency_key and self._kept_or_running(ctx, data, spec):
                return  # answered from the kept answer, or waits for the run it repeats
        except Error as exc:
            telemetry.end_span(ctx.span, exc)
            self._count_drop(f"refused_{exc.code.name.lower()}")
            if reply or exc.code == ErrorCode.NOT_A_RECIPIENT:
                # (a fire-and-forget sealed for keys older than this instance too: its
                # sender hears of it and looks them up again, instead of sealing for stale
                # keys, and losing every send balanced here, until they expire)
                self._error(crid, ident, exc.code, exc.message)
            return
        if is_stream:
            try:
                st = accept(self, crid, ident, flags, env, STREAM_WINDOW)
            except Error as exc:
                telemetry.end_span(ctx.span, exc)
                self._count_drop(f"refused_{exc.code.name.lower()}")
                self._error(crid, ident, exc.code, exc.message)
                return
            self._streams[(crid, ident)] = st
            ctx.params = data
            task = self.loop.create_task(self._run_async(fn(self, st, ctx), ctx, reply))
            self._tasks[(crid, ident)] = (task, ctx)
            return
        if inline:
            self._finish(ctx, reply, *self._call_inline(fn, data, ctx))
            return
        if inspect.iscoroutinefunction(fn):
            task = self.loop.create_task(self._run_async(fn(self, data, ctx), ctx, reply))
        else:
            task = self.loop.create_task(self._run_threaded(fn, data, ctx, reply))
        self._tasks[(crid, ident)] = (task, ctx)

    # ------------------------------------------------------------------ outbound
    def _send(self, frames: list[Any]) -> None:
        if self.core is None:
            return
        try:
            self.core.queue_frames(frames)  # coalesced with this turn's other answers
        except (Error, Closed):
            self._count_drop("reply_unsent")

    def _send_threadsafe(self, frames: list[Any]) -> None:
        assert self.loop is not None
        if self._on_loop_thread():
            self._send(frames)
        else:
            self.loop.call_soon_threadsafe(self._send, frames)

    def _on_loop_thread(self) -> bool:
        # a thread id, not asyncio.get_running_loop(): 3.11 makes a getpid() call in that
        return threading.get_ident() == self._loop_thread

    def _error(self, crid: bytes, ident: int, code: int, message: str,
               details: dict[str, str] | None = None) -> None:
        frames = error_frames(ErrorCode(code), message, ident, crid)
        if details:
            detail = agp_pb2.ErrorDetail.FromString(frames[2])
            # a handler's own Error may carry any values: the wire takes strings, and a
            # refusal here would leave the caller without an answer until its deadline
            detail.details.update({str(k): v if type(v) is str else str(v)
                                   for k, v in details.items()})
            frames[2] = detail.SerializeToString()
        self._send(frames)

    def _count_drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    # ------------------------------------------------------------------ standalone
    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        """Run this agent as a process: flags, environment (AGP_*), SIGTERM drains."""
        from agents.runner import run_agent_main

        return run_agent_main(cls, argv)


# Agent and its mixins: an action may not take the name of anything they define
_AGENT_MRO = tuple(k for k in Agent.__mro__ if k is not object)
