"""A thread-pool handler past its deadline cannot be stopped: its call stays in flight at
the router until its thread returns, so the router sends nothing more to a pool with no
free thread (another instance takes it) instead of queueing calls behind the hung one.

A real router in a thread of this process, the agents on the test's loop, real sockets on
loopback; the hung handler is let go by a ``threading.Event`` at the end.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

from agents.procs import agent_process
from mesh import AsyncMesh
from mesh.errors import DeadlineExceeded, Overloaded
from tests.core.hung_pool import SVC, _overrun, _started
from tests.helpers import router_in_thread, until, wait_for


def test_calls_after_an_overrun_go_to_an_instance_with_a_free_thread(no_identity: None) -> None:
    gate = threading.Event()

    async def main(endpoint: str) -> None:
        a, a_serving = await _started(endpoint, gate, "a", 1)
        b, b_serving = await _started(endpoint, gate, "b", 1)
        m = await AsyncMesh.connect(endpoint, breakers=False)
        try:
            await _overrun(m, a)
            # a's only thread still runs: every call goes to b, none waits behind it
            for i in range(6):
                assert await m.request(SVC, "work", i, timeout=2.0) == "b"
            with pytest.raises(Overloaded):  # pinned to a: refused at once, not timed out
                await m.request(f"{SVC}/a", "work", 1, timeout=2.0)
            gate.set()  # its thread returns: the slot is free again
            await until(lambda: not a._tasks, what="the overrun call answered")
            assert await m.request(f"{SVC}/a", "work", 1, timeout=2.0) == "a"
        finally:
            gate.set()
            await m.close()
            for agent, serving in ((a, a_serving), (b, b_serving)):
                agent.stop()
                await asyncio.wait_for(serving, 10)

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))


def test_a_pool_with_one_thread_overrunning_takes_as_many_calls_as_it_has_free_threads(
        no_identity: None) -> None:
    gate, release = threading.Event(), threading.Event()

    async def main(endpoint: str) -> None:
        a, a_serving = await _started(endpoint, gate, "a", 2)
        m = await AsyncMesh.connect(endpoint, breakers=False)
        try:
            await _overrun(m, a)
            # one thread is free: one call runs; a second one is refused, not queued
            a.gate = release
            held = asyncio.ensure_future(m.request(f"{SVC}/a", "work", "hang", timeout=5.0))
            await until(lambda: len(a.hung) == 2, what="the second call running")
            with pytest.raises(Overloaded):
                await m.request(f"{SVC}/a", "work", 1, timeout=2.0)
            release.set()
            assert await held == "a"
        finally:
            gate.set()
            release.set()
            await m.close()
            a.stop()
            await asyncio.wait_for(a_serving, 10)

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))


def test_a_drain_does_not_wait_for_a_thread_past_its_deadline(no_identity: None) -> None:
    """The thread is counted as left running (so the runner exits without joining it),
    and the drain ends at once, not after its drain timeout (20 s)."""
    gate = threading.Event()

    async def main(endpoint: str) -> None:
        a, a_serving = await _started(endpoint, gate, "a", 1)
        m = await AsyncMesh.connect(endpoint, breakers=False)
        try:
            await _overrun(m, a)
            t0 = time.monotonic()
            a.stop()
            await asyncio.wait_for(a_serving, 10)
            assert time.monotonic() - t0 < 5.0
            assert a.left_running == 1
        finally:
            gate.set()
            await m.close()

    with router_in_thread() as r:
        asyncio.run(main(r.endpoint))


def test_an_agent_process_exits_on_sigterm_with_a_thread_past_its_deadline(
        router: Any, spawn: Any, enroll: Any) -> None:
    """The interpreter would join the hung thread at exit (60 s here): the drain counts it
    as left running, so the runner leaves without it."""
    identity = enroll("echo-stuck", "test/ns")
    agent = spawn(agent_process("tests.core.stuck_handler_agent", router.ready_info["router"],
                                name="stuck", extra=["--namespace", "test/ns", "--instance",
                                                     "stuck", "--identity", identity]))

    async def main() -> None:
        m = await AsyncMesh.connect(router.ready_info["router"])
        try:
            with pytest.raises(DeadlineExceeded):
                await m.request("test/ns/echo", "stuck", None, timeout=1.0)
        finally:
            await m.close()

    asyncio.run(main())
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    wait_for(lambda: not agent.alive(), timeout=15, message="the agent process ended")
    assert time.monotonic() - t0 < 15  # not the 60 s its thread still had
    assert agent.proc is not None
    assert agent.proc.returncode == 0
