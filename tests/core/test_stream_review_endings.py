"""How a stream ends, whatever ends it: a handler that raises mid-stream reaches its caller
as itself on the direct path too (not as the agent's one-hop "no such direct stream"); an
open given up (cancelled, timed out) leaves no entry behind and never runs in a service's
slot; a chunk refused before it went costs no credit. Real router (thread), real agents,
real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agents.base import STREAM_WINDOW, Agent, StreamIn, action
from agents.context import Context
from mesh import AsyncMesh
from mesh.errors import HandlerError
from mesh.zmqio import readable
from tests.helpers import router_in_thread, until, wait_for

NS = "test/review"


class Picky(Agent):
    """Refuses the stream at its first chunk."""

    name = "picky"
    namespace = NS
    register_with_registry = False
    drain_timeout = 1.0

    @action(stream=True)
    async def first_only(self, chunks: StreamIn, ctx: Context) -> Any:
        async for chunk in chunks:
            raise ValueError(f"refused {chunk!r}")
        return 0


class Counter(Agent):
    """Counts chunks; one stream at a time when built with ``capacity=1``."""

    name = "counter"
    namespace = NS
    register_with_registry = False
    drain_timeout = 1.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.opened = 0

    @action(stream=True)
    async def count(self, chunks: StreamIn, ctx: Context) -> Any:
        self.opened += 1
        return sum([1 async for _ in chunks])


@contextlib.contextmanager
def agent_in_thread(agent: Agent) -> Iterator[Agent]:
    """``agent`` served on its own loop in a thread: the test's loop may be held while it
    answers. Stopped (and its thread joined) on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(agent.run(lambda _: ready.set()),), daemon=True)
    thread.start()
    try:
        wait_for(lambda: ready.is_set() or not thread.is_alive(), message="agent started")
        assert ready.is_set(), "the agent did not start"
        yield agent
    finally:
        if loop.is_running():
            loop.call_soon_threadsafe(agent.stop)
        thread.join(10)
        assert not thread.is_alive(), "the agent thread did not stop"
        loop.close()


def test_a_handler_error_mid_direct_stream_reaches_the_caller_as_itself() -> None:
    """The agent refuses chunks that reach a finished handler's withdrawn ticket with a
    one-hop CANCELLED on the direct connection, which overtakes the handler's own error
    (two hops, through the router). The caller must hear the handler's error."""
    with router_in_thread() as r, agent_in_thread(Picky(endpoint=r.endpoint)) as agent:
        async def main() -> None:
            async with await AsyncMesh.connect(r.endpoint) as m:
                s = await m.stream(f"{NS}/picky", "first_only").open()
                assert s.direct
                # from here the test's loop is held (no await yields: every write has credit
                # in hand) until both answers wait on the client's sockets
                await s.write(b"bad", raw=True)
                wait_for(lambda: agent.failed == 1, message="the handler raised")
                late = s.credits
                for _ in range(late):  # for the ticket the handler's end withdrew
                    await s.write(b"late", raw=True)
                wait_for(lambda: agent.direct.dropped.get("no_such_ticket") == late,
                         message="the late chunks refused on the direct socket")
                link = next(iter(m.core.direct_links().socks.values()))
                wait_for(lambda: readable(link) and readable(m.core.sock),
                         message="the refusal and the handler's error both in")
                with pytest.raises(HandlerError, match="refused b'bad'"):
                    await s.write(b"more", raw=True)  # no credit left: reads them
                s.abort()
                assert m.core.counters.get("unclaimed_error_handler_error", 0) == 0
                assert not m.core.pending
                assert not m.core.stream_acks

        asyncio.run(main())


def test_an_open_given_up_leaves_nothing_behind_and_never_runs() -> None:
    """An open cancelled while it waits in the service's queue (a timeout around ``async
    with``): ``__aexit__`` is not called for a failed ``__aenter__``, so the open cleans up
    itself. Else its credit callback stays for good, its pending entry until the stream's
    deadline, and the queued open later runs in the service's only slot for that long."""
    with router_in_thread() as r:
        async def main() -> None:
            agent = Counter(endpoint=r.endpoint, capacity=1)
            await agent.start()
            queue = r.table.services[f"{NS}/counter".encode()].queue
            try:
                async with await AsyncMesh.connect(r.endpoint) as m:
                    async with m.stream(f"{NS}/counter", "count") as busy:  # the one slot
                        waiting = m.stream(f"{NS}/counter", "count")
                        opening = asyncio.ensure_future(waiting.open())
                        await until(lambda: queue, what="the second open queued")
                        opening.cancel()
                        with pytest.raises(asyncio.CancelledError):
                            await opening
                        assert waiting.ident not in m.core.stream_acks
                        assert waiting.ident not in m.core.pending
                        await until(lambda: not queue, what="the open taken out of the queue")
                        await busy.write(1)
                    assert busy.result == 1
                    async with m.stream(f"{NS}/counter", "count", timeout=10) as after:
                        await after.write(1)  # the slot is free: no orphan handler holds it
                    assert after.result == 1
                    assert agent.opened == 2
                    assert not m.core.stream_acks
            finally:
                agent.stop()
                await agent._shutdown(1)

        asyncio.run(main())


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "via-router"])
def test_a_chunk_refused_before_it_went_costs_no_credit(direct: bool) -> None:
    """A write refused on the client (a value that cannot be encoded) sent nothing; had it
    used up a credit, a producer skipping more than half a window of bad records would
    stall for good: the agent grants credit only for chunks it took."""
    with router_in_thread() as r:
        async def main() -> None:
            agent = Counter(endpoint=r.endpoint)
            await agent.start()
            try:
                async with await AsyncMesh.connect(r.endpoint) as m:
                    async with m.stream(f"{NS}/counter", "count", direct=direct,
                                        timeout=10) as s:
                        assert s.direct is direct
                        before = s.credits
                        for _ in range(STREAM_WINDOW):
                            with pytest.raises(TypeError, match="cannot encode"):
                                await s.write(object())
                        assert s.credits == before
                        for i in range(3 * STREAM_WINDOW):
                            await s.write(i)
                    assert s.result == 3 * STREAM_WINDOW
            finally:
                agent.stop()
                await agent._shutdown(1)

        asyncio.run(main())
