"""A client the router forgets (it closed, said goodbye, its session was lost) leaves no work
for no one: each of its calls running at an agent is cancelled there, the call's slot staying
the agent's until it answers (a pool thread cannot be stopped), and each still waiting in a
service's queue is taken out, counted, and never reaches an agent.

A real router in a thread of this process, the agent and clients on the test's loop, real
sockets on loopback; the thread-pool handler is held by a ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh
from mesh.errors import Closed, Unavailable
from mesh.wire import Cmd, pack_route
from tests.helpers import router_in_thread, until

SVC = "test/gone/hold"
DEADLINE = 20.0  # generous: 2 shared cores (no call here may end by its deadline)
PROMPT = 5.0  # what "at once" may take on them


class Holder(Agent):
    """One slot. ``wait`` awaits until cancelled, ``hang`` holds its pool thread until the
    test lets ``gate`` go, ``work`` answers at once; each records what it began."""

    name = "hold"
    namespace = "test/gone"
    register_with_registry = False
    direct_streams = False
    drain_timeout = 20.0

    def __init__(self, gate: threading.Event, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate
        self.began: list[Any] = []  # the data of each call a handler began
        self.cancelled: list[Any] = []  # ... of each ``wait`` cancelled
        self.told: list[bool] = []  # ctx.cancelled as each ``hang`` returned

    @action()
    async def wait(self, data: Any, ctx: Context) -> Any:
        self.began.append(data)
        try:
            await asyncio.sleep(3 * DEADLINE)
        except asyncio.CancelledError:
            self.cancelled.append(data)
            raise
        return data

    @action()
    def hang(self, data: Any, ctx: Context) -> Any:
        self.began.append(data)
        self.gate.wait(30)
        self.told.append(ctx.cancelled)
        return data

    @action()
    def work(self, data: Any, ctx: Context) -> Any:
        self.began.append(data)
        return data


async def _close(m: AsyncMesh) -> None:
    """The client closes (a DISCONNECT, its pending calls not cancelled)."""
    await m.close()


async def _goodbye(m: AsyncMesh) -> None:
    """The router forgets the session, the connection stays (the session is made anew
    under the same routing id): a DISCONNECT from the client's socket, unknown to it."""
    assert m.core.sock is not None
    m.core.sock.send_multipart([pack_route(Cmd.DISCONNECT), b""])


GONE: dict[str, Callable[[AsyncMesh], Awaitable[None]]] = {"close": _close,
                                                           "goodbye": _goodbye}


def _waiting(r: Any) -> int:
    """Calls in the router's queue for SVC (read from the test's thread: a length)."""
    svc = r.table.services.get(SVC.encode())
    return len(svc.queue) if svc is not None else 0


async def _inflight(m: AsyncMesh) -> int:
    """The router's count of calls in flight at SVC's instance."""
    services = await m.request("agp/router", "services", timeout=PROMPT)
    return sum(i["inflight"] for s in services if s["service"] == SVC for i in s["instances"])


def _run(test: Callable[[Any, Holder, AsyncMesh, AsyncMesh], Awaitable[None]],
         gate: threading.Event) -> None:
    """``test(router, agent, client that goes, client that stays)``, torn down after."""

    async def main(r: Any) -> None:
        agent = Holder(gate, endpoint=r.endpoint, instance="a", capacity=1)
        await agent.start()
        serving = asyncio.ensure_future(agent.serve())
        meshes: list[AsyncMesh] = []
        try:
            for _ in range(2):
                meshes.append(await AsyncMesh.connect(r.endpoint, breakers=False,
                                                      timeout=DEADLINE))
            await test(r, agent, *meshes)
        finally:
            gate.set()
            for m in meshes:
                await m.close()
            agent.stop()
            await asyncio.wait_for(serving, 10)

    with router_in_thread() as r:
        asyncio.run(main(r))


async def _ended(call: asyncio.Future[Any]) -> BaseException | None:
    """The failure a gone client's own call ended with (it hears no answer)."""
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(call, DEADLINE)
    return call.exception() if call.done() and not call.cancelled() else None


@pytest.mark.parametrize("gone", sorted(GONE))
def test_a_call_at_an_async_handler_is_cancelled_and_frees_its_slot(
        no_identity: None, gone: str) -> None:
    async def test(r: Any, a: Holder, m: AsyncMesh, other: AsyncMesh) -> None:
        call = asyncio.ensure_future(m.request(SVC, "wait", "x", timeout=DEADLINE))
        await until(lambda: a.began == ["x"], DEADLINE, what="the call running at the agent")
        await GONE[gone](m)
        await until(lambda: a.cancelled == ["x"], PROMPT, what="the handler cancelled")
        assert r.stats.drops["client_gone"] == 1
        # the capacity-1 instance's slot is free again: another client's call is served
        t0 = time.monotonic()
        assert await other.request(SVC, "work", "y", timeout=DEADLINE) == "y"
        assert time.monotonic() - t0 < PROMPT
        assert a.began == ["x", "y"]
        assert await _inflight(other) == 0
        if gone == "close":
            assert isinstance(await _ended(call), Closed)
        else:
            call.cancel()  # (the client, not knowing, still waits for it)

    _run(test, threading.Event())


def test_a_pool_thread_keeps_its_slot_until_it_returns(no_identity: None) -> None:
    gate = threading.Event()

    async def test(r: Any, a: Holder, m: AsyncMesh, other: AsyncMesh) -> None:
        call = asyncio.ensure_future(m.request(SVC, "hang", "x", timeout=DEADLINE))
        await until(lambda: a.began == ["x"], DEADLINE, what="the call running at the agent")
        await m.close()
        # told: the agent gives the call up, though its thread runs on
        await until(lambda: a.dropped.get("handler_overrun") == 1, PROMPT,
                    what="the agent giving the call up")
        assert r.stats.drops["client_gone"] == 1
        assert isinstance(await _ended(call), Closed)
        # the slot stays taken until the thread returns: the next call waits at the router
        # instead of going to a pool with no free thread
        nxt = asyncio.ensure_future(other.request(SVC, "work", "y", timeout=DEADLINE))
        await until(lambda: nxt.done() or _waiting(r), DEADLINE, what="the call queued")
        assert not nxt.done(), nxt
        assert a.began == ["x"]
        assert await _inflight(other) == 1
        gate.set()
        assert await nxt == "y"
        assert a.told == [True]  # its thread saw the call cancelled
        assert a.began == ["x", "y"]
        assert await _inflight(other) == 0

    _run(test, gate)


@pytest.mark.parametrize("gone", sorted(GONE))
def test_a_queued_call_of_a_gone_client_is_taken_out_and_never_runs(
        no_identity: None, gone: str) -> None:
    gate = threading.Event()

    async def test(r: Any, a: Holder, m: AsyncMesh, other: AsyncMesh) -> None:
        held = asyncio.ensure_future(other.request(SVC, "hang", "held", timeout=DEADLINE))
        await until(lambda: a.began == ["held"], DEADLINE, what="the slot taken")
        lost = asyncio.ensure_future(m.request(SVC, "work", "lost", timeout=DEADLINE))
        await until(lambda: lost.done() or _waiting(r), DEADLINE, what="the call queued")
        assert not lost.done(), lost
        await GONE[gone](m)
        await until(lambda: not _waiting(r), PROMPT, what="the queued call taken out")
        assert r.stats.drops["caller_gone"] == 1  # counted while the slot is still taken
        assert "client_gone" not in r.stats.drops  # it had nothing at an instance
        if gone == "goodbye":
            # its new session, under the same routing id, is there when the slot frees
            await m.request("agp/router", "ping", timeout=DEADLINE)
            assert isinstance(await _ended(lost), Unavailable)
        else:
            assert isinstance(await _ended(lost), Closed)
        gate.set()
        assert await held == "held"
        assert await other.request(SVC, "work", "after", timeout=DEADLINE) == "after"
        assert a.began == ["held", "after"]  # the gone client's call never reached it
        assert a.served == 2
        assert a.told == [False]  # (the client that stayed: its call was not cancelled)

    _run(test, gate)
