"""Review of the retry wait (``agents.retries``), its hooks in ``agents.calls`` and the
READY bookkeeping of threads past their deadline (``agents.presence``).

Real routers in threads of this process (a restarted one on the first's ports), agents and
clients on the test's loop, real sockets on loopback; hung handlers are let go by a
``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh, DeadlineExceeded
from mesh.wire import Cmd
from tests.core.hung_pool import (
    DEADLINE,
    SVC,
    _client,
    _overrun,
    _restart,
    _services,
    _started,
    _until_seen,
)
from tests.helpers import router_in_thread, until

NS = "test/review-retry"


def test_a_call_from_before_a_restart_that_overruns_after_it_is_not_offered(
        no_identity: None) -> None:
    """A call the old router sent, still within its deadline at the restart (so the new
    router is offered every thread), that passes its deadline afterwards: the new router
    never counted it, so its thread is taken back from the offer until it returns.
    Before, the new router kept sending calls to wait behind the hung thread."""
    gate = threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack, contextlib.ExitStack() as old:
            r1 = old.enter_context(router_in_thread())
            endpoint = r1.endpoint
            a, a_serving = await _started(endpoint, gate, "a", 1)
            b, b_serving = await _started(endpoint, gate, "b", 1)
            m: AsyncMesh | None = None
            try:
                m1 = await AsyncMesh.connect(endpoint, breakers=False)
                try:  # hangs past its deadline, which comes after the restart
                    hung = asyncio.ensure_future(
                        m1.request(f"{SVC}/a", "work", "hang", timeout=8.0))
                    await until(lambda: a.hung, DEADLINE, what="the call running at a")
                    r2 = await _restart(old, stack, r1, a, b)
                    assert a.overrunning == 0, "the restart took longer than the deadline"
                    with contextlib.suppress(Exception):
                        await hung  # (the old router took it with it)
                finally:
                    await m1.close()
                m = await _client(endpoint, r2)
                await until(lambda: a.dropped.get("handler_overrun") == 1, DEADLINE,
                            what="the call from before the restart past its deadline")
                await _until_seen(m, "a", 0)
                for i in range(4):  # none waits behind the hung thread
                    assert await m.request(SVC, "work", i, timeout=2.0) == "b"
                gate.set()  # its thread returns: a offers its slot again
                await _until_seen(m, "a", 1)
                assert await m.request(f"{SVC}/a", "work", 1, timeout=2.0) == "a"
                assert a.unseen_calls == 0
            finally:
                gate.set()
                if m is not None:
                    await m.close()
                for agent, serving in ((a, a_serving), (b, b_serving)):
                    agent.stop()
                    await asyncio.wait_for(serving, 10)

    asyncio.run(main())


class Fitter(Agent):
    """``fit`` waits for its data (the test's gate) only as long as its own call's time
    allows, less a margin to answer in: then it says its deadline passed, itself."""

    name = "fitter"
    namespace = NS
    register_with_registry = False
    direct_streams = False
    drain_timeout = 1.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ran: list[Any] = []
        self.gate = asyncio.Event()

    @action()
    async def fit(self, data: Any, ctx: Context) -> Any:
        self.ran.append(data)
        try:
            await asyncio.wait_for(self.gate.wait(), max(0.0, ctx.remaining() - 0.3))
        except asyncio.TimeoutError:
            raise DeadlineExceeded("no data within this call's deadline") from None
        return {"model": data}


def test_a_run_that_runs_out_of_its_own_time_is_retried_by_the_waiting_retry(
        no_identity: None) -> None:
    """The first attempt's handler says DEADLINE_EXCEEDED of its own (a margin, a
    downstream call given its remaining time) a moment before its deadline's timer: the
    retry waiting with a deadline of its own runs the handler then, as when the run is
    cut at its deadline. Before, it was answered DEADLINE_EXCEEDED at the first
    attempt's deadline, long before its own."""
    async def main(endpoint: str) -> Fitter:
        agent = Fitter(endpoint=endpoint)
        await agent.start()
        serving = asyncio.ensure_future(agent.serve())
        try:
            async with await AsyncMesh.connect(endpoint) as first, \
                    await AsyncMesh.connect(endpoint) as retry:
                svc = f"{NS}/fitter"
                a = asyncio.ensure_future(first.request(svc, "fit", "attempt 1",
                                                        idempotency_key="run-1/fit",
                                                        timeout=1.5))
                await until(lambda: agent.ran, what="the first attempt running")
                b = asyncio.ensure_future(retry.request(svc, "fit", "attempt 2",
                                                        idempotency_key="run-1/fit",
                                                        timeout=30.0))
                await until(lambda: len(agent._tasks) == 2, what="the retry waiting")
                with pytest.raises(DeadlineExceeded):
                    await asyncio.wait_for(a, 10)
                await until(lambda: len(agent.ran) == 2 or b.done(), 10,
                            what="the retry running on its own, or answered")
                assert not b.done(), b  # not the first attempt's deadline
                agent.gate.set()
                assert await asyncio.wait_for(b, 10) == {"model": "attempt 2"}
        finally:
            agent.gate.set()
            agent.stop()
            await asyncio.wait_for(serving, 10)
        return agent

    with router_in_thread() as r:
        agent = asyncio.run(main(r.endpoint))
    assert agent.ran == ["attempt 1", "attempt 2"]
    assert agent._running == {}


def test_a_token_refresh_keeps_the_slots_the_router_counts(no_identity: None) -> None:
    """A HELLO on the live connection (a token refresh: every few minutes on a secure mesh)
    is answered by the same router, which still counts the overrunning call in flight:
    the READY that follows offers every thread but those unseen by it. Before, it took
    the overrunning thread off a second time, leaving a free thread idle until the hung
    one returned."""
    gate = threading.Event()

    async def main(endpoint: str) -> None:
        a, a_serving = await _started(endpoint, gate, "a", 2)
        m = await AsyncMesh.connect(endpoint, breakers=False)
        try:
            await _overrun(m, a)
            assert await m.request(f"{SVC}/a", "work", 1, timeout=2.0) == "a"
            assert a.core is not None
            welcomes = a.core.welcome
            a.core.refresh_token()  # HELLO again on the live connection
            await until(lambda: a.core is not None and a.core.welcome is not welcomes,
                        DEADLINE, what="the refresh's WELCOME")
            await until(lambda: a.core is not None and not any(
                p.frames and p.frames[0][1] == Cmd.READY for p in a.core.pending.values()),
                DEADLINE, what="its READY answered")
            assert (await _services(m))["a"]["capacity"] == 2
            # its free thread still serves (before: Overloaded, none offered)
            assert await m.request(f"{SVC}/a", "work", 2, timeout=2.0) == "a"
        finally:
            gate.set()
            await m.close()
            a.stop()
            await asyncio.wait_for(a_serving, 10)

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))
