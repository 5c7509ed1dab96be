"""A retry of a call that still runs at an agent joins it: the handler runs once.

A workflow step carries an idempotency key; retried while its first attempt still works
(a router restart, a client-side timeout), the retry used to run the handler a second time,
at once: a long training step ran twice. Now it waits for the first and is answered as the
first was (its value, or its error), within its own deadline; its caller's CANCEL answers
only it; at most ``joined.MAX_JOINED`` retries wait for one call (past that: Overloaded).

A real router in a thread, the agent on the test's loop, real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from agents import joined
from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh, Cancelled, DeadlineExceeded, Malformed, Overloaded
from router.server import Router
from tests.helpers import router_in_thread, until

NS = "test/joined"
SVC = f"{NS}/trainer"


class Trainer(Agent):
    """``train`` (a task) and ``fit`` (a pool thread) run until the test opens their gate."""

    name = "trainer"
    namespace = NS
    register_with_registry = False
    drain_timeout = 1.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ran: list[Any] = []
        self.gate = asyncio.Event()
        self.thread_gate = threading.Event()

    @action()
    async def train(self, data: Any, ctx: Context) -> Any:
        self.ran.append(data)
        await self.gate.wait()
        if data == "fail":
            raise Malformed("row 3 is not a number", details={"row": 3})
        return {"model": data}

    @action()
    def fit(self, data: Any, ctx: Context) -> Any:
        self.ran.append(data)
        self.thread_gate.wait(30)  # bounded: the test opens it
        if data == "fail":
            raise ValueError("singular matrix")
        return {"model": data}

    @action()
    async def evaluate(self, data: Any, ctx: Context) -> Any:
        self.ran.append(data)
        await self.gate.wait()
        return {"score": data}

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


def _call(m: AsyncMesh, act: str, data: Any, key: str, timeout: float = 30.0
          ) -> asyncio.Future[Any]:
    return asyncio.ensure_future(m.request(SVC, act, data, idempotency_key=key,
                                           timeout=timeout))


async def _arrived(agent: Trainer, calls: int) -> None:
    """Until ``calls`` calls are in flight at the agent (running or joined)."""
    await until(lambda: len(agent._tasks) == calls, what=f"{calls} calls at the agent")


@pytest.mark.parametrize("act", ["train", "fit"])
def test_a_retry_while_the_first_runs_is_answered_with_its_answer(router: Router,
                                                                    act: str) -> None:
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
    assert agent._inflight == {}


@pytest.mark.parametrize(("act", "error", "message", "details"), [
    ("train", Malformed, "row 3 is not a number", {"row": "3"}),
    ("fit", Exception, "ValueError: singular matrix", {"type": "ValueError"}),
])
def test_a_retry_of_a_failing_call_gets_the_same_error(
        router: Router, act: str, error: type[Exception], message: str,
        details: dict[str, str]) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, act, "fail", "run-2/train")
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, act, "would succeed", "run-2/train")
        await _arrived(agent, 2)
        agent.open_gates()
        got = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 10)
        for exc in got:
            assert isinstance(exc, error)
            exc.details.pop("instance")  # (the client's own note of who answered)
            assert (exc.code, exc.message, exc.details) == (got[0].code, message, details)

    agent = _run(router, body)
    assert agent.ran == ["fail"]
    assert agent.failed == 2
    assert agent._inflight == {}


def test_a_joined_retry_ends_at_its_own_deadline_or_cancel_the_first_goes_on(
        router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "attempt 1", "run-3/train")
        await until(lambda: agent.ran, what="the first attempt running")
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(_call(retry, "train", "late", "run-3/train", 0.5), 10)
        assert time.monotonic() - started < 5  # at its deadline, not held by the first
        # answered by the agent (counted there), not only given up by its client
        await until(lambda: agent.failed == 1, what="the agent answering the late retry")
        cancelled = _call(retry, "train", "given up", "run-3/train")
        await _arrived(agent, 2)
        cancelled.cancel()  # its caller's CANCEL reaches the agent
        with pytest.raises((asyncio.CancelledError, Cancelled)):
            await cancelled
        await until(lambda: agent.failed == 2, what="the agent answering the cancel")
        await _arrived(agent, 1)
        assert not a.done()  # the first call goes on, untouched
        agent.open_gates()
        assert await asyncio.wait_for(a, 10) == {"model": "attempt 1"}

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]
    assert agent._inflight == {}


def test_when_the_first_passes_its_deadline_its_retries_hear_it_then(router: Router) -> None:
    """The first ends at its own deadline: a joined retry is answered with that error at
    that moment (it is not left to wait until its own, later deadline)."""
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "attempt 1", "run-4/train", timeout=1.0)
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, "train", "attempt 2", "run-4/train", timeout=60)
        await _arrived(agent, 2)
        got = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 10)
        assert all(isinstance(exc, DeadlineExceeded) for exc in got), got

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]
    assert agent._inflight == {}


def test_when_the_first_is_cancelled_by_its_caller_its_retries_hear_it(router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "fit", "attempt 1", "run-8/fit")
        await until(lambda: agent.ran, what="the first attempt running")
        b = _call(retry, "fit", "attempt 2", "run-8/fit", timeout=60)
        await _arrived(agent, 2)
        a.cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(b, 10)
        agent.thread_gate.set()  # (the first's thread, which nobody can stop, ends)

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]
    assert agent._inflight == {}


def test_other_keys_and_other_actions_run_on_their_own(router: Router) -> None:
    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "a", "run-5/train")
        await until(lambda: agent.ran, what="the first call running")
        same = _call(retry, "train", "a again", "run-5/train")
        other_key = _call(retry, "train", "b", "run-6/train")
        other_action = _call(retry, "evaluate", "c", "run-5/train")
        await _arrived(agent, 4)
        agent.open_gates()
        got = await asyncio.wait_for(asyncio.gather(a, same, other_key, other_action), 10)
        assert got == [{"model": "a"}, {"model": "a"}, {"model": "b"}, {"score": "c"}]

    agent = _run(router, body)
    assert sorted(agent.ran) == ["a", "b", "c"]
    assert agent._inflight == {}


def test_retries_waiting_for_one_call_are_bounded(router: Router,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joined, "MAX_JOINED", 2)

    async def body(agent: Trainer, first: AsyncMesh, retry: AsyncMesh) -> None:
        a = _call(first, "train", "attempt 1", "run-7/train")
        await until(lambda: agent.ran, what="the first attempt running")
        waiting = [_call(retry, "train", i, "run-7/train") for i in range(2)]
        await _arrived(agent, 3)
        with pytest.raises(Overloaded):
            await asyncio.wait_for(_call(retry, "train", "one more", "run-7/train"), 10)
        agent.open_gates()
        got = await asyncio.wait_for(asyncio.gather(a, *waiting), 10)
        assert got == [{"model": "attempt 1"}] * 3

    agent = _run(router, body)
    assert agent.ran == ["attempt 1"]
    assert agent.dropped.get("refused_overloaded") == 1
    assert agent._inflight == {}
