"""Pool calls still running across a router restart, a drain giving up on a run its retries
wait for, and a pool handler raising what is not an ``Exception``.

A restarted router counts nothing in flight: a thread busy with a call from an earlier
session, within its deadline or past it, is not offered to it until the call ends (else its
calls wait in the pool behind a training step while another instance idles). A drain does
not wait for the retries of a run past its deadline: the router answers them at once.
``SystemExit`` from a handler is that call's HANDLER_ERROR, not the end of the agent's loop.

Real routers in threads of this process (a restarted one on the first's ports), agents and
clients on the test's loop, real sockets on loopback; hung handlers are let go by a
``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest

from agents.base import action
from agents.context import Context
from mesh import AsyncMesh
from mesh.errors import Error, HandlerError, Unavailable
from mesh.wire import Cmd
from tests.core.hung_pool import (
    DEADLINE,
    SVC,
    Worker,
    _client,
    _restart,
    _services,
    _started,
    _until_seen,
)
from tests.helpers import router_in_thread, until


async def _refreshed(agent: Worker) -> None:
    """A HELLO on the live connection (a token refresh), its WELCOME and READY answered."""
    core = agent.core
    assert core is not None
    welcome = core.welcome
    core.refresh_token()
    await until(lambda: core.welcome is not welcome, DEADLINE, what="the refresh's WELCOME")
    await _settled(agent)


def test_a_call_running_within_its_deadline_at_a_restart_keeps_its_thread_off_the_offer(
        no_identity: None) -> None:
    """Across two restarts and a token refresh, a's only thread, busy with a call the first
    router sent (its deadline minutes away), is offered to neither new router until the
    call ends; then its slot is offered again. Before, the new router was offered it and
    sent calls that waited behind the running one while b idled."""
    gate = threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack, contextlib.ExitStack() as old, \
                contextlib.ExitStack() as older:
            r1 = older.enter_context(router_in_thread())
            endpoint = r1.endpoint
            a, a_serving = await _started(endpoint, gate, "a", 1)
            b, b_serving = await _started(endpoint, gate, "b", 1)
            m: AsyncMesh | None = None
            try:
                m1 = await AsyncMesh.connect(endpoint, breakers=False)
                try:
                    running = asyncio.ensure_future(
                        m1.request(f"{SVC}/a", "work", "hang", timeout=60.0))
                    await until(lambda: a.hung, DEADLINE, what="the call running at a")
                    r2 = await _restart(older, old, r1, a, b)
                    with contextlib.suppress(Error):
                        await running  # (the first router took it with it)
                finally:
                    await m1.close()
                m = await _client(endpoint, r2)
                await _until_seen(m, "a", 0)
                await _refreshed(a)  # the same router: it still is offered nothing more
                await _until_seen(m, "a", 0)
                await m.close()
                m = None
                r3 = await _restart(old, stack, r2, a, b)
                m = await _client(endpoint, r3)
                await _until_seen(m, "a", 0)
                for i in range(4):  # none waits behind the running call
                    assert await m.request(SVC, "work", i, timeout=2.0) == "b"
                assert a.overrunning == 0  # within its deadline all along
                gate.set()  # the call ends: a offers its thread again
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


def test_a_retry_from_before_a_restart_that_runs_after_it_takes_its_thread_off_the_offer(
        no_identity: None) -> None:
    """A retry that came to the first router's agent waiting for a run past its deadline is
    made the runner after the restart, when that run's thread returns: the new router never
    counted it, so its thread is taken off the offer until it ends. Before, the new router
    was offered both threads, one of them busy with the retry."""
    gate, release = threading.Event(), threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack, contextlib.ExitStack() as old:
            r1 = old.enter_context(router_in_thread())
            endpoint = r1.endpoint
            a, a_serving = await _started(endpoint, gate, "a", 2)
            m: AsyncMesh | None = None
            try:
                m1 = await AsyncMesh.connect(endpoint, breakers=False)
                try:
                    with pytest.raises(Error):
                        await m1.request(f"{SVC}/a", "work", "hang", timeout=0.3,
                                         idempotency_key="step-1")
                    await until(lambda: a.overrunning == 1, DEADLINE, what="the run overrunning")
                    retry = await _retry_waiting(m1, a, 2)
                    r2 = await _restart(old, stack, r1, a)
                    retry.cancel()
                finally:
                    await m1.close()
                m = await _client(endpoint, r2)
                await _until_seen(m, "a", 1)
                a.gate = release
                gate.set()  # the run's thread returns: the retry runs the handler itself
                await until(lambda: len(a.hung) == 2, DEADLINE, what="the retry running")
                await _settled(a)
                assert (await _services(m))["a"]["capacity"] == 1
                release.set()  # it ends: both threads are offered
                await _until_seen(m, "a", 2)
                assert a.unseen_calls == 0
            finally:
                gate.set()
                release.set()
                if m is not None:
                    await m.close()
                a.stop()
                await asyncio.wait_for(a_serving, 10)

    asyncio.run(main())


async def _settled(agent: Worker) -> None:
    """Until no READY of ``agent`` waits for its answer."""
    core = agent.core
    assert core is not None
    await until(lambda: not any(p.frames and p.frames[0][1] == Cmd.READY
                                for p in core.pending.values()), DEADLINE,
                what="its READY answered")


async def _retry_waiting(m: AsyncMesh, agent: Worker, waiting: int) -> asyncio.Future[Any]:
    """A retry of the "hang" call (its key) that waits for its run, with a long deadline."""
    retry = asyncio.ensure_future(m.request(f"{SVC}/a", "work", "hang", timeout=60.0,
                                            idempotency_key="step-1"))
    await until(lambda: len(agent._tasks) == waiting, DEADLINE, what="the retry waiting")
    return retry


def test_a_drain_leaves_at_once_the_retries_of_a_run_past_its_deadline(
        no_identity: None) -> None:
    """The drain does not wait for a thread past its deadline, nor for the retry waiting
    for its run: the agent leaves at once, and the router answers the retry (pinned to it:
    UNAVAILABLE; unpinned, it goes to another instance). Before, the drain waited its
    whole drain_timeout (20 s) for the retry."""
    gate = threading.Event()

    async def main(endpoint: str) -> None:
        a, a_serving = await _started(endpoint, gate, "a", 2)
        m = await AsyncMesh.connect(endpoint, breakers=False)
        try:
            with pytest.raises(Error):
                await m.request(f"{SVC}/a", "work", "hang", timeout=0.3,
                                idempotency_key="step-1")
            await until(lambda: a.overrunning == 1, DEADLINE, what="the run past its deadline")
            retry = await _retry_waiting(m, a, 2)
            t0 = time.monotonic()
            a.stop()
            with pytest.raises(Unavailable):
                await asyncio.wait_for(retry, 5)
            await asyncio.wait_for(a_serving, 5)
            assert time.monotonic() - t0 < 5.0
            assert a.left_running == 1  # the hung thread only
            assert len(a.hung) == 1  # the retry never ran the handler
        finally:
            gate.set()
            await m.close()
            a.stop()

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))


class Quitter(Worker):
    """``quit`` raises what it is given (SystemExit, KeyboardInterrupt) from a pool thread."""

    @action(name="quit")
    def quit_(self, data: Any, ctx: Context) -> Any:
        raise {"exit": SystemExit, "interrupt": KeyboardInterrupt}[data]("bye")


@pytest.mark.parametrize("what", ["exit", "interrupt"])
def test_a_pool_handler_raising_a_base_exception_fails_its_call_only(
        no_identity: None, what: str) -> None:
    """The call hears HANDLER_ERROR and the agent goes on serving. Before, the exception
    left the handler's task and stopped the agent's loop."""
    async def main(endpoint: str) -> None:
        a = Quitter(threading.Event(), endpoint=endpoint, instance="a", capacity=1)
        await a.start()
        serving = asyncio.ensure_future(a.serve())
        try:
            async with await AsyncMesh.connect(endpoint, breakers=False) as m:
                with pytest.raises(HandlerError, match="bye"):
                    await m.request(SVC, "quit", what, timeout=5.0)
                assert await m.request(SVC, "work", 1, timeout=5.0) == "a"
                assert a.failed == 1
        finally:
            a.stop()
            await asyncio.wait_for(serving, 10)

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))

