"""A SIGTERM ends an agent process within its drain time even when a handler thread never
returns (the interpreter would join that thread forever)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from agents.procs import agent_process
from mesh import AsyncMesh, Unavailable
from tests.helpers import wait_for

SVC = "test/ns/echo"


def test_a_handler_thread_that_ignores_cancellation_does_not_hold_the_exit(
        router, spawn, enroll) -> None:
    identity = enroll("echo-stuck", "test/ns")
    agent = spawn(agent_process("tests.core.stuck_handler_agent", router.ready_info["router"],
                                name="stuck", extra=["--namespace", "test/ns", "--instance",
                                                     "stuck", "--identity", identity,
                                                     "--drain-timeout", "1"]))

    async def main() -> float:
        m = await AsyncMesh.connect(router.ready_info["router"])
        try:
            call = asyncio.ensure_future(m.request(SVC, "stuck", None, timeout=30))
            inflight = 0
            for _ in range(500):  # bounded: until the router counts the call in flight
                services = await m.request("agp/router", "services")
                inflight = sum(i["inflight"] for s in services if s["service"] == SVC
                               for i in s["instances"])
                if inflight or call.done():
                    break
                await asyncio.sleep(0.01)
            assert inflight == 1
            t0 = time.monotonic()
            agent.signal(signal.SIGTERM)
            with pytest.raises(Unavailable):  # the instance left with the call unanswered
                await call
            return t0
        finally:
            await m.close()

    t0 = asyncio.run(main())
    wait_for(lambda: not agent.alive(), timeout=15, message="the agent process ended")
    assert time.monotonic() - t0 < 15  # not the 60 s the handler's thread still had
    assert agent.proc is not None
    assert agent.proc.returncode == 0
