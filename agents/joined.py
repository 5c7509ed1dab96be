"""Retries of a call that still runs here join it, for :class:`agents.base.Agent`.

A call with an idempotency key has its answer kept for its retries (``agents.calls``); a
retry that comes while the first call still runs (a workflow step retried after a router
restart or a client-side timeout) would find nothing kept and run the handler a second
time, at once. Here it waits for the first instead, under its own deadline, and is answered
as the first was: its value (as a kept answer is replayed) or its error.

If the first call ends by its caller's CANCEL or its deadline, its retries hear that same
error then: promoting one of them to run the handler could start it while the first one's
thread (which cannot be stopped) still runs, the very thing joining is there to prevent;
a retry told DEADLINE_EXCEEDED is retried by its client within its own budget.

Only calls that want a reply and are not streams join; calls without a key never reach this
module (one falsy check on the dispatch path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from agents.context import Context
from mesh.errors import Cancelled, DeadlineExceeded, Error, Overloaded

MAX_JOINED = 64  # retries that may wait for one call; past that they are told Overloaded

# what a joined retry is answered with: the first's error, or its (flags, payload)
Answer = Error | tuple[int, list[Any]]


class InFlight:
    """A call with an idempotency key running here, and the retries waiting for it."""

    __slots__ = ("leader", "outcome", "waiters")

    def __init__(self, leader: Context) -> None:
        self.leader = leader
        self.outcome: asyncio.Future[Answer] | None = None  # made when a retry joins
        self.waiters: set[asyncio.Task[None]] = set()


class Joins:
    """Joining retries to the call they repeat. A mixin of Agent (through Calls)."""

    # provided by Agent
    loop: asyncio.AbstractEventLoop | None
    _tasks: dict[tuple[bytes, int], Any]
    _inflight: dict[Hashable, InFlight]  # answer_key() -> the call running with it
    _finish: Any
    _replay: Any

    def _join_or_lead(self, key: Hashable, ctx: Context) -> bool:
        """True when ``ctx`` joined the call running with answer key ``key`` (it is answered
        when that one ends); False when it is the first and its handler is to run. Raises
        Overloaded when MAX_JOINED retries wait already."""
        entry = self._inflight.get(key)
        if entry is None:
            self._inflight[key] = InFlight(ctx)
            return False
        if len(entry.waiters) >= MAX_JOINED:
            raise Overloaded(f"{MAX_JOINED} retries of this call wait for it already")
        assert self.loop is not None
        if entry.outcome is None:
            entry.outcome = self.loop.create_future()
        task = self.loop.create_task(self._await_first(entry.outcome, ctx))
        entry.waiters.add(task)
        task.add_done_callback(entry.waiters.discard)  # whatever way it ends, even unrun
        self._tasks[(ctx.crid, ctx.ident)] = (task, ctx)  # its caller's CANCEL finds it
        return True

    def _lead_ended(self, key: Hashable, ctx: Context, answer: Answer) -> None:
        """The call ``ctx`` ended (any way): hand its answer to the retries that joined it
        and take it out of the registry, if it is the one running with ``key``."""
        entry = self._inflight.get(key)
        if entry is None or entry.leader is not ctx:  # (a retry, or refused before running)
            return
        del self._inflight[key]
        if entry.outcome is not None:
            entry.outcome.set_result(answer)  # a result, never an exception: none unread

    async def _await_first(self, outcome: asyncio.Future[Answer], ctx: Context) -> None:
        """Wait for the first call's answer, up to ``ctx``'s own deadline, and answer ``ctx``
        with it; a CANCEL from its caller ends this wait only (the first goes on)."""
        assert self.loop is not None
        try:
            answer: Answer = await asyncio.wait_for(
                asyncio.shield(outcome), max(0.001, ctx.deadline - self.loop.time()))
        except asyncio.TimeoutError:
            answer = DeadlineExceeded("passed its deadline waiting for the first call with "
                                      "its idempotency key")
        except asyncio.CancelledError:
            answer = Cancelled("cancelled by the caller")
        if isinstance(answer, Error):
            self._finish(ctx, True, None, answer)
            return
        self._tasks.pop((ctx.crid, ctx.ident), None)
        flags, payload = answer
        self._replay(ctx, [flags, 0, *payload])
