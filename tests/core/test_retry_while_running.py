"""A retry that comes while the call it repeats still runs waits for that run.

A workflow step carries an idempotency key; retried while its first attempt still works
(a router restart, a client-side timeout, a lost reply), the retry found no kept answer and
ran the handler a second time, at once. Now it waits for the run: answered with its outcome
when it ends on its own; when the run is given up (its caller's CANCEL, its deadline) the
retry runs the handler itself, under its own deadline, never alongside the first. A join
that handed the retry the first caller's cancel was tried and reverted: these tests check
the retry gets a real result then.

A real router in a thread, the agent on the test's loop, real sockets on loopback; the
sealed variant on a secure router with a real registry process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from agents.procs import agent_process
from mesh import AsyncMesh, Cancelled, DeadlineExceeded, Malformed
from router.server import Router
from security.home import client_security
from tests.helpers import router_in_thread, until
from tests.security.sealed_mesh import tapped_router  # noqa: F401 (a fixture)

NS = "test/retry"
SVC = f"{NS}/trainer"


class Trainer(Agent):
    """``train`` (a task) and ``fit`` (a pool thread) run until the test opens their gate;
    each counts its runs, and how many ran at once at most. Told to stop, each stops."""

    name = "trainer"
    namespace = NS
    register_with_registry = False
    drain_timeout = 1.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ran: list[Any] = []
        self.running = 0
        self.most = 0  # the most runs at once
        self.gate = asyncio.Event()
        self.thread_gate = threading.Event()
        self._count = threading.Lock()

    def _began(self, data: Any) -> None:
        with self._count:
            self.ran.append(data)
            self.running += 1
            self.most = max(self.most, self.running)

    def _ended(self) -> None:
        with self._count:
            self.running -= 1

    @action()
    async def train(self, data: Any, ctx: Context) -> Any:
        self._began(data)
        try:
            await self.gate.wait()
        finally:
            self._ended()
        if data == "fail":
            raise Malformed("row 3 is not a number", details={"row": "3"})
        return {"model": data}

    @action()
    def fit(self, data: Any, ctx: Context) -> Any:
        self._began(data)
        try:
            while not self.thread_gate.is_set():  # bounded: the test opens it, or cancels
                if ctx.wait_cancelled(0.01):
                    return {"partial": data}  # what a handler told to stop has: no answer
        finally:
            self._ended()
        return {"model": data}

    def open_gates(self) -> None:
        self.gate.set()
        self.thread_gate.set()


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[Router]:
    monkeypatch.delenv("AGP_IDENTITY", raising=False)  # an insecure router
    with router_in_thread() as r:
        yield r


def _run(router: Router, body: Callable[[Trainer, AsyncMesh, AsyncMesh], Awaitable[Any]]
         ) -> Trainer:
    """Run ``body`` with a started agent and two clients (a first caller and a retrying
    one); stop the agent whatever happens; hand it back for its counters."""
    async def main() -> Trainer:
        agent = Trainer(endpoint=router.endpoint)
        await agent.start()
        try:
            async with await AsyncMesh.connect(router.endpoint) as first, \
                    await AsyncMesh.connect(router.endpoint) as retry:
                await body(agent, first, retry)
        finally:
            agent.open_gates()
            agent.stop()
            await agent.serve()
        return agent

    return asyncio.run(main())


def _call(m: AsyncMesh, act: str, data: Any, key: str, timeout: float = 30.0,
          svc: str = SVC) -> asyncio.Future[Any]:
    return asyncio.ensure_future(m.request(svc, act, data, idempotency_key=key,
                                           timeout=timeout))


async def _arrived(agent: Agent, calls: int) -> None:
    """Until ``calls`` calls are in flight at the agent (running or waiting)."""
    await until(lambda: len(agent._tasks) == calls, what=f"{calls} calls at the agent")


@pytest.mark.parametrize("act", ["train", "fit"])
def test_a_retry_during_a_run_is_answered_with_its_result_the_handler_ran_once(
        router: Router, act: str) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, act, "attempt 1", "run-1/train")
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, act, "attempt 2", "run-1/train")
        c = _call(retry, act, "attempt 3", "run-1/train")
        await _arrived(agent, 3)
        agent.open_gates()
        answers = await asyncio.wait_for(asyncio.gather(a, b, c), 10)
        assert answers == [{"model": "attempt 1"}] * 3

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]  # once, not three times at once
    assert (agent.served, agent.failed) == (3, 0)
    assert agent._running == {}


def test_a_retry_of_a_run_that_fails_gets_its_error(router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "fail", "run-2/train")
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, "train", "would succeed", "run-2/train")
        await _arrived(agent, 2)
        agent.open_gates()
        got = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 10)
        for exc in got:
            assert isinstance(exc, Malformed), got
            assert (exc.message, exc.details.get("row")) == ("row 3 is not a number", "3")

    agent = _run(router, body)
    assert agent.ran == ["fail"]
    assert agent.failed == 2
    assert agent._running == {}


@pytest.mark.parametrize("act", ["train", "fit"])
def test_when_the_first_caller_cancels_the_retry_runs_it_itself(router: Router,
                                                                 act: str) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, act, "attempt 1", "run-3/train")
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, act, "attempt 2", "run-3/train")
        await _arrived(agent, 2)
        assert agent.ran == ["attempt 1"]  # it waits: not a second run at once
        a.cancel()  # the first caller's CANCEL reaches the agent; that run stops
        with pytest.raises((asyncio.CancelledError, Cancelled)):
            await a
        await until(lambda: len(agent.ran) == 2, what="the retry running on its own")
        agent.open_gates()
        assert await asyncio.wait_for(b, 10) == {"model": "attempt 2"}  # not the cancel
        # kept for later retries: the answer of the run that finished
        assert await _call(retry, act, "later", "run-3/train") == {"model": "attempt 2"}

    agent = _run(router, body)
    assert agent.ran == ["attempt 1", "attempt 2"]
    assert agent.most == 1  # never two runs at once
    assert agent._running == {}


def test_when_the_first_passes_its_deadline_the_retry_runs_under_its_own(
        router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "fit", "attempt 1", "run-4/fit", timeout=1.0)
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, "fit", "attempt 2", "run-4/fit", timeout=30)
        await _arrived(agent, 2)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(a, 10)
        await until(lambda: len(agent.ran) == 2, what="the retry running on its own")
        assert not b.done()  # it runs under its own (later) deadline
        agent.open_gates()
        assert await asyncio.wait_for(b, 10) == {"model": "attempt 2"}

    agent = _run(router, body)
    assert agent.ran == ["attempt 1", "attempt 2"]
    assert agent.most == 1
    assert agent._running == {}


def test_a_waiting_retry_ends_at_its_deadline_or_cancel_and_the_run_goes_on(
        router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "attempt 1", "run-5/train")
        await until(lambda: agent.ran, what="the first attempt running")
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(_call(retry, "train", "late", "run-5/train", 0.5), 10)
        # answered by the agent (counted there), not only given up by its client
        await until(lambda: agent.failed == 1, what="the agent answering the late retry")
        cancelled = _call(retry, "train", "given up", "run-5/train")
        await _arrived(agent, 2)
        cancelled.cancel()  # its caller's CANCEL ends its wait only
        with pytest.raises((asyncio.CancelledError, Cancelled)):
            await cancelled
        await until(lambda: agent.failed == 2, what="the agent answering the cancel")
        await _arrived(agent, 1)
        assert not a.done()  # the run goes on, untouched
        agent.open_gates()
        assert await asyncio.wait_for(a, 10) == {"model": "attempt 1"}
        # a retry after the run ended: the kept answer
        assert await _call(retry, "train", "later", "run-5/train") == {"model": "attempt 1"}

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]
    assert agent._running == {}


def test_a_sealed_retry_during_a_run_gets_its_result_sealed_for_it(
        tapped_router: Any, spawn: Any, enroll: Any) -> None:  # noqa: F811 (a fixture)
    """End to end sealed: the run's answer is sealed for the retry with the retry's own key;
    a retry of a run given up runs with its own payload, opened when it arrived (a sealed
    payload opens once: the replay window refuses it a second time)."""
    r, _, _ = tapped_router
    enroll("registry", "agp/system")
    spawn(agent_process("discovery.service", r.endpoint, name="registry",
                        extra=["--identity", "registry"]))
    enroll("trainer-e2e", NS)

    async def main() -> Trainer:
        agent = Trainer(endpoint=r.endpoint, security=client_security("trainer-e2e"))
        agent.register_with_registry = True  # clients seal for the key it registers
        agent.require_e2e = True
        await agent.start()
        try:
            async with await AsyncMesh.connect(r.endpoint, e2e=True) as first, \
                    await AsyncMesh.connect(r.endpoint, e2e=True) as retry:
                await until(lambda: agent.registered, what="the agent registered")
                a = _call(first, "train", "attempt 1", "run-6/train")
                await until(lambda: agent.ran, what="the first attempt running")
                b = _call(retry, "train", "attempt 2", "run-6/train")
                await _arrived(agent, 2)
                agent.open_gates()
                answers = await asyncio.wait_for(asyncio.gather(a, b), 10)
                assert answers == [{"model": "attempt 1"}] * 2
                # the first given up: the retry runs with its own payload, opened on arrival
                agent.gate.clear()
                a = _call(first, "train", "attempt 3", "run-7/train")
                await until(lambda: len(agent.ran) == 2, what="the first attempt running")
                b = _call(retry, "train", "attempt 4", "run-7/train")
                await _arrived(agent, 2)
                a.cancel()
                await until(lambda: len(agent.ran) == 3, what="the retry running on its own")
                agent.open_gates()
                assert await asyncio.wait_for(b, 10) == {"model": "attempt 4"}
        finally:
            agent.open_gates()
            agent.stop()
            await agent.serve()
        return agent

    agent = asyncio.run(main())
    assert agent.ran == ["attempt 1", "attempt 3", "attempt 4"]
    assert agent.dropped.get("second_sealed_reply") is None
    assert agent._running == {}

