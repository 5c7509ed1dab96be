"""What an agent does with a call it has answered, and with an answer it keeps.

A call given up (its deadline passed, or its caller cancelled) while it still waits
behind a stuck thread never runs: the stuck thread keeps its slot at the router, where the
next calls wait. A kept answer (idempotency key) replays only to a retry of the same call: the same
action, from the same sealing caller. Real router, real agents, real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh, Cancelled, DeadlineExceeded, Mesh
from tests.helpers import router_in_thread, until
from tests.security.sealed_mesh import sealed_mesh, tapped_router  # noqa: F401 (fixtures)

NS = "test/review"


class Slow(Agent):
    """One thread (capacity 1); ``stuck`` ignores its cancellation, as a long fit may."""

    name = "slow"
    namespace = NS
    register_with_registry = False
    drain_timeout = 1.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ran: list[str] = []
        self.release = threading.Event()

    @action()
    def job(self, data: Any, ctx: Context) -> Any:
        self.ran.append(data)
        if data == "stuck":
            self.release.wait(30)  # never looks at ctx.cancelled; bounded by this wait
        return data

    @action(inline=True)
    def echo(self, data: Any, ctx: Context) -> Any:
        return data

    @action(inline=True)
    def whoami(self, data: Any, ctx: Context) -> Any:
        return self.instance_name


def test_a_call_given_up_while_queued_behind_a_stuck_thread_never_runs() -> None:
    """The stuck call's thread runs on past its deadline and keeps its slot at the router
    (agents.calls._hold_slot): the calls sent next wait in the router's queue, not in the
    pool. Answered DEADLINE_EXCEEDED or CANCELLED there, they must not run once the thread
    is free (their callers were told they failed), nor hold the thread the next live call
    needs."""
    svc = f"{NS}/slow"
    with router_in_thread() as r:
        queue = lambda: r.table.services[svc.encode()].queue  # noqa: E731

        async def main() -> Slow:
            agent = Slow(endpoint=r.endpoint, capacity=1)
            await agent.start()
            try:
                async with await AsyncMesh.connect(r.endpoint) as m:
                    with pytest.raises(DeadlineExceeded):
                        await m.request(svc, "job", "stuck", timeout=0.5)
                    await until(lambda: agent.dropped.get("handler_overrun") == 1,
                                what="the stuck call given up, its thread still running")
                    with pytest.raises(DeadlineExceeded):  # waited at the router all along
                        await m.request(svc, "job", "expired", timeout=0.5)
                    call = asyncio.ensure_future(m.request(svc, "job", "cancelled",
                                                           timeout=30))
                    await until(lambda: len(queue()) == 1, what="the call queued")
                    call.cancel()
                    with pytest.raises((asyncio.CancelledError, Cancelled)):
                        await call
                    await until(lambda: not queue(), what="the cancel taken off the queue")
                    agent.release.set()  # the thread is free: the slot too
                    assert await m.request(svc, "job", "after", timeout=10) == "after"
            finally:
                agent.release.set()
                agent.stop()
                await agent.serve()
            return agent

        agent = asyncio.run(main())
    # one thread, first in first out: a given-up call still queued would have run first
    assert agent.ran == ["stuck", "after"]


def test_a_kept_answer_does_not_answer_another_action_with_the_same_key() -> None:
    svc = f"{NS}/slow"
    with router_in_thread() as r:
        async def main() -> None:
            agent = Slow(endpoint=r.endpoint)
            await agent.start()
            try:
                async with await AsyncMesh.connect(r.endpoint) as m:
                    assert await m.request(svc, "echo", "first", idempotency_key="req-7",
                                           timeout=5) == "first"
                    assert await m.request(svc, "whoami", None, idempotency_key="req-7",
                                           timeout=5) == agent.instance_name
                    # the retry of the first call is still answered from its answer
                    assert await m.request(svc, "echo", "again", idempotency_key="req-7",
                                           timeout=5) == "first"
                    long_key = "k" * 100_000  # kept as its digest, still found by its retry
                    assert await m.request(svc, "echo", 1, idempotency_key=long_key) == 1
                    assert await m.request(svc, "echo", 2, idempotency_key=long_key) == 1
                    assert all(len(k[2]) <= 64 for k in agent._idem)
            finally:
                agent.stop()
                await agent.serve()

        asyncio.run(main())


def test_a_sealed_answer_is_not_replayed_to_another_caller_with_the_same_key(
        sealed_mesh, tapped_router) -> None:  # noqa: F811 (fixtures)
    """A caller's sealed answer is kept in plaintext for its retries; a call with the same
    idempotency key that was not sealed by that caller (here: not sealed at all) must run
    on its own, not receive that answer."""
    m, _, _ = sealed_mesh
    r, _, _ = tapped_router
    svc = "test/e2e/echo"
    secret = {"secret": "the sealing caller's answer"}
    assert m.request(svc, "echo", secret, idempotency_key="job-1") == secret
    assert m.request(svc, "echo", "retried", idempotency_key="job-1") == secret  # its retry
    with Mesh.connect(r.endpoint) as plain:  # another caller, not sealing: same key
        assert plain.request(svc, "echo", "mine", idempotency_key="job-1") == "mine"
