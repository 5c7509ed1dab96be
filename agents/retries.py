"""A retry of a call that still runs here waits for that run, for :class:`agents.base.Agent`.

A call with an idempotency key has its answer kept for its retries (``agents.calls``); a
retry that came while the first still ran (a workflow step retried after a router restart,
a timed-out attempt, a lost reply) found nothing kept and ran the handler a second time, at
once. Now it waits, under its own deadline, for the run's outcome:

- the run ends on its own (its result, or its handler's own error): the retry is answered
  with it, sealed for the retry as a kept answer is replayed;
- the run is given up (its caller's CANCEL, its deadline; what a handler told to stop
  returns is no answer) or fails with a DEADLINE_EXCEEDED of its own (its time, not the
  retry's): the first retry still waiting runs the handler itself, with its own
  payload (a sealed one opens once: it was opened when the retry came) under its own
  deadline, and the others wait for that run. It is not handed the first caller's cancel (a
  join that did so was reverted). A thread past its deadline ends its run only when it
  returns (``Calls._hold_slot``), so two runs of one call never overlap;
- its own deadline passes, or its caller cancels: it alone is answered, and leaves;
- the agent drains: the drain does not wait for a run whose thread is past its deadline,
  nor for its retries: they are left in flight at the router, which sends them to another
  instance when this one leaves (they are idempotent) or answers UNAVAILABLE, at once, as
  the calls the drain gives up on at its timeout.

Streams and inline handlers (done before the next message is read) never wait; calls
without a key never reach this module. Each waiting retry holds a slot at the router, so
the router's count of this agent's capacity bounds them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable
from typing import Any

from agents.context import Context
from mesh.errors import Cancelled, DeadlineExceeded, Error

_PROMOTED = object()  # handed to the waiting retry that is to run the handler itself


class Run:
    """A call with an idempotency key running here, and the retries waiting for it."""

    __slots__ = ("held", "leader", "waiters")

    def __init__(self, leader: Context) -> None:
        self.leader = leader  # the call whose handler runs
        self.waiters: dict[Context, asyncio.Future[Any]] = {}  # in the order they came
        self.held = False  # its thread past its deadline: it ends when it returns, if ever


class Retries:
    """Retries waiting for the run they repeat. A mixin of Agent (through Calls)."""

    # provided by Agent
    loop: asyncio.AbstractEventLoop | None
    _tasks: dict[tuple[bytes, int], Any]
    _running: dict[Hashable, Run]  # answer_key() -> the run of that call here
    _finish: Any
    _replay: Any
    _run_async: Any
    _run_threaded: Any
    sessions: int  # (Presence) routers announced to (a new one counts nothing in flight)

    def _lead_or_wait(self, key: Hashable, ctx: Context, data: Any,
                      fn: Callable[..., Any]) -> bool:
        """False when no call with answer key ``key`` runs here: ``ctx``'s handler is to run,
        as that run. True when one runs: ``ctx`` waits for it (with ``data``, its payload)."""
        run = self._running.get(key)
        if run is None:
            self._running[key] = Run(ctx)
            return False
        assert self.loop is not None
        outcome = self.loop.create_future()
        run.waiters[ctx] = outcome
        task = self.loop.create_task(self._wait_for_run(outcome, ctx, data, fn))
        self._tasks[(ctx.crid, ctx.ident)] = (task, ctx)  # its caller's CANCEL finds it
        return True

    def _run_ended(self, key: Hashable, ctx: Context, outcome: Error | tuple[int, list[Any]]
                   ) -> None:
        """Call ``ctx`` (answer key ``key``) was answered ``outcome``, an error or its
        (flags, payload). Its run's waiting retries get that outcome; if it was given up
        (told to stop) or ran out of time (a DEADLINE_EXCEEDED of its own: a margin, a
        downstream call given what was left, a moment before its timer; not the retries'
        time), the first of them runs the handler itself. A waiting retry that was
        answered (its deadline, its caller's cancel) only leaves the wait."""
        run = self._running.get(key)
        if run is None:
            return
        if run.leader is not ctx:
            run.waiters.pop(ctx, None)
            return
        if not ctx.cancelled and not isinstance(outcome, DeadlineExceeded):
            del self._running[key]
            for waiter in run.waiters.values():
                waiter.set_result(outcome)
            return
        if not run.waiters:
            del self._running[key]
            return
        run.leader = nxt = next(iter(run.waiters))
        run.waiters.pop(nxt).set_result(_PROMOTED)

    async def _wait_for_run(self, outcome: asyncio.Future[Any], ctx: Context, data: Any,
                            fn: Callable[..., Any]) -> None:
        """Wait, up to ``ctx``'s own deadline, for the run ``ctx`` repeats; answer ``ctx``
        with its outcome, or run the handler if that run was given up."""
        assert self.loop is not None
        arrived = self.sessions  # (the router that counts it in flight: Calls._hold_slot)
        got: Any
        try:
            got = await asyncio.wait_for(asyncio.shield(outcome),
                                         max(0.0, ctx.deadline - self.loop.time()))
        except asyncio.TimeoutError:
            ctx.cancel()  # (given up: were it just made the runner, the next one runs)
            got = DeadlineExceeded("passed its deadline waiting for the run of the call it "
                                   "repeats")
        except asyncio.CancelledError:
            ctx.cancel()
            got = Cancelled("cancelled by the caller")
        if got is _PROMOTED and not ctx.cancelled:
            if inspect.iscoroutinefunction(fn):
                await self._run_async(fn(self, data, ctx), ctx, True)
            else:
                await self._run_threaded(fn, data, ctx, True, arrived)
        elif got is _PROMOTED:  # its caller's CANCEL came as it was made the runner
            self._finish(ctx, True, None, Cancelled("cancelled by the caller"))
        elif isinstance(got, Error):
            self._finish(ctx, True, None, got)
        else:
            self._tasks.pop((ctx.crid, ctx.ident), None)
            flags, payload = got
            self._replay(ctx, [flags, 0, *payload])

    async def _drain_calls(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the calls in flight but the retries waiting for a run
        whose thread is past its deadline (its run may never end: the drain leaves them to
        the router, see above); return how many are left running. Those left waiting are
        told to stop: a run that ends after the agent closed makes none the runner."""
        assert self.loop is not None
        end = self.loop.time() + timeout
        while True:
            held = {ctx for run in self._running.values() if run.held for ctx in run.waiters}
            waits = [task for task, ctx in self._tasks.values()
                     if task is not None and not task.done() and ctx not in held]
            left = end - self.loop.time()
            if not waits or left <= 0:
                break
            # (a run that passes its deadline meanwhile ends its task: looked at again)
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for run in self._running.values():
            for ctx in run.waiters:
                ctx.cancel()
        return len(waits)
