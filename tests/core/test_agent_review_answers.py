"""Every call an agent takes is answered at once, whatever its handler hands back: an error
whose details are not strings, a result too deeply nested to encode. Either used to raise
inside the agent's answering, so the caller heard nothing until its deadline.

A real router in a thread, the agent on the test's loop, real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh, Cancelled, HandlerError, Malformed
from router.server import Router
from tests.helpers import router_in_thread

SVC = "test/answers/odd"


class Odd(Agent):
    name = "odd"
    namespace = "test/answers"
    register_with_registry = False
    drain_timeout = 1.0

    @action(inline=True)
    def refuse(self, data: Any, ctx: Context) -> Any:
        raise Malformed("row 3 is not a number", details={"row": 3, "column": None})

    @action(inline=True)
    def deep(self, data: Any, ctx: Context) -> Any:
        nested: list[Any] = []
        for _ in range(5000):
            nested = [nested]
        return nested


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


@contextlib.asynccontextmanager
async def serving(agent: Agent, endpoint: str) -> AsyncIterator[AsyncMesh]:
    """``agent`` started, and a client of its router; the agent stopped after."""
    await agent.start()
    try:
        async with await AsyncMesh.connect(endpoint) as m:
            yield m
    finally:
        agent.stop()
        await agent.serve()


def test_odd_answers_reach_the_caller_at_once(router: Router) -> None:
    async def main() -> tuple[Malformed, HandlerError]:
        async with serving(Odd(endpoint=router.endpoint), router.endpoint) as m:
            # (the deadline is far: an answer that never comes fails the wait_for)
            with pytest.raises(Malformed) as refused:
                await asyncio.wait_for(m.request(SVC, "refuse", timeout=60), 10)
            with pytest.raises(HandlerError) as deep:
                await asyncio.wait_for(m.request(SVC, "deep", timeout=60), 10)
            return refused.value, deep.value

    refused, deep = asyncio.run(main())
    assert (refused.details["row"], refused.details["column"]) == ("3", "None")
    assert "cannot be encoded" in deep.message


class Stopping(Agent):
    """``stop_early`` is told to stop before it returns (as its deadline's timer tells a
    handler, and that timer may fire before the agent's own wait for it ends) and, as a
    handler that stops when told does, returns what it has."""

    name = "stopping"
    namespace = "test/answers"
    register_with_registry = False
    drain_timeout = 1.0

    @action()
    def stop_early(self, data: Any, ctx: Context) -> Any:
        ctx.cancel()
        return "partial"


def test_what_a_handler_returns_after_it_was_told_to_stop_is_no_answer(router: Router) -> None:
    async def main() -> tuple[Exception, int]:
        agent = Stopping(endpoint=router.endpoint)
        async with serving(agent, router.endpoint) as m:
            with pytest.raises(Cancelled) as told:
                await m.request("test/answers/stopping", "stop_early", timeout=10,
                                idempotency_key="k1")
            return told.value, len(agent._idem)

    told, kept = asyncio.run(main())
    assert "before it answered" in str(told)
    assert kept == 0  # not kept for the call's retries: they run the handler again
