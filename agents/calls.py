"""Running one call and answering it, for :class:`agents.base.Agent`.

A handler runs inline on the loop (``@action(inline=True)``), as a task (``async def``), or
in the agent's thread pool (plain functions, so a long fit never stalls heartbeats), each
under the call's deadline: past it the handler is cancelled and the caller hears
DEADLINE_EXCEEDED (a thread, which cannot be stopped, keeps its call in flight at the router
until it returns: no call is sent to a pool with no free thread; a router met after a call
came is offered its thread once the call ends, ``agents.presence``). Its result is encoded and
sent back (sealed with the request's key when the request was sealed, once); its exception
becomes an error reply with a code (a handler's SystemExit or KeyboardInterrupt too: it
fails its call, not the agent's loop), and a fire-and-forget's failure is counted, since nobody
waits for it. A call with an idempotency key has its answer kept for its retries, and a
retry that comes while it runs waits for that run (``agents.retries``).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from google.protobuf.message import DecodeError

from agents.context import Context
from agents.retries import Retries, Run
from mesh import codec, telemetry
from mesh.errors import Cancelled, DeadlineExceeded, Error, HandlerError, Unauthenticated
from mesh.metrics import payload_bytes
from mesh.wire import Cmd, Flag, pack_route, split_nonce
from proto import agp_pb2
from security.payload import DIRECT_BLOB_LEN, seal_reply

log = logging.getLogger("agp.agent")
_PAST_DEADLINE = "past its deadline"  # the cancel message of a handler whose time ran out

IDEMPOTENCY_CACHE = 10_000  # answers kept for retried calls (by idempotency key) ...
IDEMPOTENCY_CACHE_BYTES = 64 * 1024 * 1024  # ... and their bytes: a workflow step's dataset
_KEY_KEPT_WHOLE = 64  # longer idempotency keys are kept as their digest (outside the budget)
# what a handler raising fails its call with, not the agent's loop: its own SystemExit or
# KeyboardInterrupt too (the agent stops on SIGINT/SIGTERM through the loop's handlers)
_HANDLER_FAILURES = (Exception, SystemExit, KeyboardInterrupt)
_ENCRYPTED, _RAW = int(Flag.ENCRYPTED), int(Flag.RAW)


class Calls(Retries):
    """Handlers under their deadlines, and the answers. A mixin of Agent."""

    # provided by Agent
    loop: asyncio.AbstractEventLoop | None
    boxes: Any
    metrics: Any
    failed: int
    served: int
    overrunning = 0  # handler threads past their deadline, still running (see _hold_slot)
    threads_busy = 0  # pool jobs not ended (running, or queued for a thread): see Presence
    _pool: Any
    _tasks: dict[tuple[bytes, int], Any]
    _streams: dict[tuple[bytes, int], Any]
    _idem: OrderedDict[Hashable, list[Any]]  # answer_key() -> [flags, size, *payload]
    _idem_bytes: int
    _running: dict[Hashable, Run]  # answer_key() -> a call running here (agents.retries)
    _send: Any
    _error: Any
    _count_drop: Any
    _envelopes: dict[bytes, agp_pb2.Envelope]
    sessions: int  # (Presence) routers announced to (a new one counts nothing in flight)
    _slot_back: Any  # (Presence) a call from an earlier session ended: its thread offered
    _slot_taken: Any  # (Presence) a call from an earlier session takes a thread: withdrawn

    def _call_inline(self, fn: Callable[..., Any], data: Any, ctx: Context
                     ) -> tuple[Any, BaseException | None]:
        token = telemetry.use_span(ctx.span)
        try:
            return fn(self, data, ctx), None
        except _HANDLER_FAILURES as exc:
            return None, exc
        finally:
            telemetry.release(token)

    async def _run_async(self, coro: Any, ctx: Context, reply: bool) -> None:
        assert self.loop is not None
        task = asyncio.current_task()
        telemetry.use_span(ctx.span)  # in this task's own context: its calls are children
        timer = self.loop.call_at(ctx.deadline, self._expire, task, ctx)
        try:
            result: Any = await coro
            exc: BaseException | None = None
        except asyncio.CancelledError as cancelled:
            # told by who cancelled, not by the clock: the loop's timers may fire a little
            # before the deadline (uvloop's round to the millisecond)
            exc = (DeadlineExceeded("handler passed its deadline")
                   if cancelled.args[:1] == (_PAST_DEADLINE,)
                   else Cancelled("cancelled by the caller"))
            del cancelled
            result = None
        except _HANDLER_FAILURES as e:
            result, exc = None, e
        finally:
            timer.cancel()
        self._finish(ctx, reply, result, exc)

    async def _run_threaded(self, fn: Callable[..., Any], data: Any, ctx: Context,
                            reply: bool, arrived: int | None = None) -> None:
        """``arrived``: the sessions count when the call came (now, unless a waiting retry's:
        ``agents.retries``), that is which router counts it in flight: an earlier one's call
        holds a thread the current router was not told of (``Presence._slot_taken``)."""
        assert self.loop is not None
        if arrived is None:
            arrived = self.sessions
        elif arrived < self.sessions:
            self._slot_taken()
        if ctx.span is None:
            job = self._pool.submit(fn, self, data, ctx)
        else:  # the pool thread runs with the span current (executors copy no context)
            telemetry.use_span(ctx.span)
            job = self._pool.submit(contextvars.copy_context().run, fn, self, data, ctx)
        self.threads_busy += 1
        fut = asyncio.wrap_future(job, loop=self.loop)  # (what run_in_executor does)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            ctx.cancel()

        timer = self.loop.call_at(ctx.deadline, expire)
        # Given up (deadline, caller's CANCEL) before a thread took it, the call leaves the
        # pool's queue and is answered at once. Else see _hold_slot.
        try:
            remaining = max(0.001, ctx.deadline - self.loop.time())
            result: Any = await asyncio.wait_for(asyncio.shield(fut), remaining)
            exc: BaseException | None = None
            if ctx.cancelled:
                # told to stop (its deadline's timer, which may fire before the wait's own,
                # or its caller) before it answered: a handler that stops when told returns
                # what it has, which is no answer, to be kept for the call's retries least
                result, exc = None, (DeadlineExceeded("handler passed its deadline") if expired
                                     else Cancelled("cancelled before it answered"))
        except asyncio.TimeoutError:
            ctx.cancel()
            result, exc = None, DeadlineExceeded("handler passed its deadline")
        except asyncio.CancelledError:
            ctx.cancel()
            result, exc = None, Cancelled("cancelled by the caller")
        except _HANDLER_FAILURES as e:
            result, exc = None, e
        finally:
            timer.cancel()
        if exc is not None and not fut.done() and not job.cancel():
            self._hold_slot(fut, ctx, reply, exc, arrived)
            return
        self.threads_busy -= 1
        if arrived < self.sessions:
            self._slot_back()
        self._finish(ctx, reply, result, exc)

    def _hold_slot(self, fut: asyncio.Future[Any], ctx: Context, reply: bool,
                   exc: BaseException, held_since: int) -> None:
        """A handler thread given up on but still running (Python cannot stop it): its call
        is answered only when the thread returns, so the router counts it in flight until
        then and sends no call to a pool with no free thread (it would wait, unseen by the
        balancer, behind the hung one while another instance stood idle). The caller hears
        DEADLINE_EXCEEDED at its deadline from its own clock; the router's queue and other
        instances take what comes meanwhile. A drain does not wait for it (left_running).
        A router met in a session after the call came (``held_since``) was not offered its
        thread (``Presence``), and is offered it again when it returns. Its run's waiting
        retries are left to the router by a drain (``Retries._drain_calls``)."""
        self.overrunning += 1
        self._count_drop("handler_overrun")
        if ctx.envelope.idempotency_key:
            run = self._running.get(answer_key(ctx))
            if run is not None and run.leader is ctx:
                run.held = True

        def returned(done: asyncio.Future[Any]) -> None:
            self.overrunning -= 1
            self.threads_busy -= 1
            if held_since < self.sessions:
                self._slot_back()
            if not done.cancelled():
                done.exception()  # (retrieved: too late, the answer is ``exc`` whatever it is)
            self._finish(ctx, reply, None, exc)

        fut.add_done_callback(returned)

    def _expire(self, task: asyncio.Task[Any] | None, ctx: Context) -> None:
        ctx.cancel()
        if task is not None:
            task.cancel(_PAST_DEADLINE)

    def _answer_if_never_ran(self, task: asyncio.Task[Any], ctx: Context) -> None:
        """After a CANCEL: a task cancelled before its first step never ran the wrapper
        that answers; answered here then, or the call's slot at the router stays taken."""
        if task.cancelled() and self._tasks.get((ctx.crid, ctx.ident), (None,))[0] is task:
            self._finish(ctx, True, None, Cancelled("cancelled by the caller"))

    def _finish(self, ctx: Context, reply: bool, result: Any, exc: BaseException | None) -> None:
        key = (ctx.crid, ctx.ident)
        self._tasks.pop(key, None)
        st = self._streams.pop(key, None)
        if st is not None:
            st.close()
        if ctx.span is not None:
            telemetry.end_span(ctx.span, exc)
        if self.metrics is not None:
            self.metrics.handled(ctx.action, self.loop.time() - ctx.started, exc)
        if exc is not None:
            self.failed += 1
            if not reply:
                log.warning("%s (fire-and-forget) failed: %r", ctx.action, exc)
                self._count_drop("send_handler_error")
                return
            if not isinstance(exc, Error):
                log.warning("%s raised %s: %s", ctx.action, type(exc).__name__, exc)
                exc = HandlerError(f"{type(exc).__name__}: {exc}",
                                   details={"type": type(exc).__name__})
            self._error(ctx.crid, ctx.ident, exc.code, exc.message, exc.details)
            if ctx.envelope.idempotency_key:  # (the retries waiting for it hear it too)
                self._run_ended(answer_key(ctx), ctx, exc)
            return
        self.served += 1
        if not reply:
            return
        if type(result) is bytes:
            flags, payload = _RAW, [result]
        else:
            try:
                flags, payload = 0, codec.encode(result)
            except (TypeError, ValueError, Error) as e:  # (ValueError: nested too deep)
                bad = HandlerError(f"result cannot be encoded: {e}")
                self._error(ctx.crid, ctx.ident, bad.code, bad.message)
                if ctx.envelope.idempotency_key:
                    self._run_ended(answer_key(ctx), ctx, bad)
                return
        if ctx.envelope.idempotency_key:
            kept = answer_key(ctx)
            if not ctx.cancelled:  # (what a handler told to stop returns is no answer)
                self._remember_answer(kept, flags, payload)
            self._run_ended(kept, ctx, (flags, payload))
        self._reply(ctx, flags, payload)

    def _kept_or_running(self, ctx: Context, data: Any,
                         spec: tuple[Callable[..., Any], bool, bool]) -> bool:
        """A call with an idempotency key: True when it is answered from the answer kept
        for it, or waits for the run of the call it repeats (``agents.retries``); False
        when its handler (``spec``: function, stream, inline) is to run."""
        key = answer_key(ctx)
        cached = self._idem.get(key)
        if cached is not None:
            self._replay(ctx, cached)
            return True
        fn, is_stream, inline = spec
        return not (is_stream or inline) and self._lead_or_wait(key, ctx, data, fn)

    def _replay(self, ctx: Context, cached: list[Any]) -> None:
        """Answer a retried call from the idempotency cache: served, as a first call is
        (its span ended, its latency observed), without running the handler again."""
        if ctx.span is not None:
            ctx.span.set_attribute("agp.idempotent_replay", True)
            telemetry.end_span(ctx.span)
        if self.metrics is not None:
            self.metrics.handled(ctx.action, self.loop.time() - ctx.started, None)
        self.served += 1
        self._reply(ctx, cached[0], cached[2:])

    def _remember_answer(self, key: Hashable, flags: int, payload: list[Any]) -> None:
        """Keep an answer for a retry of the same call, within a count and a byte budget
        (oldest out first); an answer bigger than the whole budget is not kept."""
        size = payload_bytes(payload)
        if size > IDEMPOTENCY_CACHE_BYTES:
            return
        old = self._idem.pop(key, None)
        if old is not None:
            self._idem_bytes -= old[1]
        self._idem[key] = [flags, size, *payload]
        self._idem_bytes += size
        while len(self._idem) > IDEMPOTENCY_CACHE or self._idem_bytes > IDEMPOTENCY_CACHE_BYTES:
            self._idem_bytes -= self._idem.popitem(last=False)[1][1]

    def _reply(self, ctx: Context, flags: int, payload: list[Any]) -> None:
        """Send a REPLY; sealed with the request's key when the request was sealed."""
        if ctx.reply_to:
            key, ctx.reply_key = ctx.reply_key, None
            if key is None:  # its nonce was used: a sealed request gets one answer
                self._count_drop("second_sealed_reply")
                return
            payload = seal_reply(key, payload, b"reply\0" + ctx.ident.to_bytes(8, "little"))
            flags |= _ENCRYPTED
        self._send([pack_route(Cmd.REPLY, flags, 0, 0, ctx.ident), ctx.crid, b"", *payload])

    def _sealed_envelope(self, header: bytes) -> tuple[agp_pb2.Envelope, bytes]:
        """A sealed request's envelope and e2e blob. The envelope but its trailing blob
        repeats (action, sender key) and is parsed once; a header of another shape is
        parsed whole (protobuf merges fields, so both read the same)."""
        parts = split_nonce(header, DIRECT_BLOB_LEN)
        if parts is not None:
            prefix, blob = parts
            env = self._envelopes.get(prefix)
            if env is None:
                try:
                    env = agp_pb2.Envelope.FromString(prefix)
                except DecodeError:  # the cut was not between fields: read it whole
                    env = agp_pb2.Envelope.FromString(header)
                    return env, env.nonce
                if (len(self._envelopes) < 4096 and not env.traceparent
                        and not env.idempotency_key):  # single-use headers: not kept
                    self._envelopes[prefix] = env
            return env, blob
        env = agp_pb2.Envelope.FromString(header)
        return env, env.nonce

    def _open_payload(self, env: agp_pb2.Envelope, ident: int, payload: list[bytes],
                      blob: bytes) -> tuple[list[bytes], Any]:
        """The plaintext and the key of the answer (``security.payload.ReplyKey``)."""
        if self.boxes is None:
            raise Unauthenticated("sealed payload, but this agent has no key (insecure mode)")
        # a stream's session key is bound in: nobody on the path can swap it
        return self.boxes.open(env.sender_key, blob, payload,
                               env.action.encode() + b"\0" + ident.to_bytes(8, "little")
                               + env.ephemeral_key)


def answer_key(ctx: Context) -> tuple[str, bytes, str | bytes]:
    """Where a call's answer is kept for its retries: its idempotency key, within its action
    and its sealing caller (``reply_to``, the key its payload was opened with; empty when
    not sealed). A key alone would answer another action, or another caller (an unsealed
    one too, in plaintext), with an answer that was not theirs. A long key is kept as its
    digest: keys are not in the byte budget, and a caller's key may be megabytes."""
    key = ctx.envelope.idempotency_key
    if len(key) > _KEY_KEPT_WHOLE:
        return ctx.action, ctx.reply_to, hashlib.sha256(key.encode()).digest()
    return ctx.action, ctx.reply_to, key
