"""READY with no free slot, and a slot given back by a later READY: an instance whose only
thread is past its deadline (unseen by a router met in a new session) stays known there with
0 free slots, so calls to its service wait in the router's queue instead of failing
NoSuchService; when the thread returns, its READY on the same session hands them the slot
at once, not at the router's next housekeeping tick.

Real routers in threads of this process (the second on the first's ports), the agent and a
client on the test's loop, real sockets on loopback; the hung handler is let go by a
``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
import zmq

from mesh import AsyncMesh
from mesh.errors import Error, Malformed
from mesh.wire import HEARTBEAT_FRAME, Cmd
from proto import agp_pb2
from tests.core.hung_pool import (
    SVC,
    Worker,
    _client,
    _overrun,
    _restart,
    _services,
    _started,
)
from tests.helpers import router_in_thread, until, wait_for

DEADLINE = 20.0  # generous: 2 shared cores
SLOW_TICK = 60.0  # a housekeeping tick that never comes within a test


async def _queued(m: AsyncMesh) -> int:
    services = await m.request("agp/router", "services", timeout=5)
    return sum(s["queued"] for s in services if s["service"] == SVC)


async def _hung_after_restart(stack: contextlib.ExitStack, gate: threading.Event,
                              **config: Any) -> tuple[Worker, asyncio.Future[None], Any]:
    """Agent ``a`` (one thread) whose thread hangs past its deadline, then a new router
    (``config``) on the first one's ports: it counts nothing in flight."""
    with contextlib.ExitStack() as old:
        r1 = old.enter_context(router_in_thread())
        a, a_serving = await _started(r1.endpoint, gate, "a", 1)
        m1 = await AsyncMesh.connect(r1.endpoint, breakers=False)
        try:
            await _overrun(m1, a)
        finally:
            await m1.close()
        r2 = await _restart(old, stack, r1, a, **config)
    return a, a_serving, r2


def test_an_instance_with_no_free_thread_stays_known_and_its_calls_wait(
        no_identity: None) -> None:
    gate = threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack:
            a, a_serving, r2 = await _hung_after_restart(stack, gate)
            m: AsyncMesh | None = None
            try:
                m = await _client(r2.endpoint, r2)
                # known with 0 free slots: registered, sent nothing
                assert (await _services(m)).get("a", {}).get("capacity") == 0
                with pytest.raises(Error):  # pinned to a: refused at once (at capacity)
                    await asyncio.wait_for(m.request(f"{SVC}/a", "work", 1, timeout=30.0), 5)
                call = asyncio.ensure_future(m.request(SVC, "work", 1, timeout=DEADLINE))
                mc = m
                await until(lambda: call.done() or _waiting(r2), DEADLINE,
                            what="the call queued")
                assert not call.done(), call  # waits, not NoSuchService
                assert await _queued(mc) == 1
                gate.set()  # its thread returns: the queued call takes the slot
                t0 = time.monotonic()
                assert await call == "a"
                assert time.monotonic() - t0 < DEADLINE / 2
                assert a.dropped.get("handler_overrun") == 1
            finally:
                gate.set()
                if m is not None:
                    await m.close()
                a.stop()
                await asyncio.wait_for(a_serving, 10)

    asyncio.run(main())


def test_a_slot_given_back_by_ready_serves_the_queued_call_at_once(no_identity: None) -> None:
    """The new router's housekeeping tick (which also drains queues) never comes during the
    test: the queued call is served only if the repeated READY itself hands it the slot."""
    gate = threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack:
            # (its heartbeats come on the tick: the peers must not take its silence as death)
            a, a_serving, r2 = await _hung_after_restart(stack, gate, tick=SLOW_TICK,
                                                         heartbeat_interval=SLOW_TICK)
            assert a.core is not None
            a.core.liveness = 10 * SLOW_TICK
            m: AsyncMesh | None = None
            try:
                m = await _client(r2.endpoint, r2)
                m.core.liveness = 10 * SLOW_TICK
                # (no tick comes: served only by the READY, else DeadlineExceeded, still
                # queued; the deadline is generous, two shared cores may be slow to get here)
                call = asyncio.ensure_future(m.request(SVC, "work", 1, timeout=DEADLINE))
                mc = m
                await until(lambda: call.done() or _waiting(r2), DEADLINE,
                            what="the call queued")
                assert not call.done(), call
                gate.set()  # its thread returns: READY offers the slot again
                t0 = time.monotonic()
                assert await call == "a"
                assert time.monotonic() - t0 < DEADLINE / 2
                assert await _queued(mc) == 0
            finally:
                gate.set()
                if m is not None:
                    await m.close()
                a.stop()
                await asyncio.wait_for(a_serving, 10)
                _stop_now(r2)

    asyncio.run(main())


def _waiting(r: Any) -> int:
    """Calls in the router's queue for SVC (read from the test's thread: a length)."""
    svc = r.table.services.get(SVC.encode())
    return len(svc.queue) if svc is not None else 0


def _stop_now(r: Any) -> None:
    """Stop a router whose tick is far off: its loop sees the stop when a message wakes its
    poll, so one is sent (it is no peer's: the router drops it)."""
    r.stop()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(r.endpoint)
        sock.send(HEARTBEAT_FRAME)
        # (its sockets are closed by its loop on the way out)
        wait_for(lambda: r.sock.closed, DEADLINE, message="the router stopped")
    finally:
        sock.close(linger=0)


def test_free_slots_above_capacity_are_refused_and_unset_means_capacity(
        no_identity: None) -> None:
    """A READY whose free slots exceed its capacity is refused as malformed, counted, and
    registers nothing; one without free slots (an older agent's) keeps reading a capacity
    of 0 as 1."""

    async def main(r: Any) -> None:
        m = await AsyncMesh.connect(r.endpoint, breakers=False, kind=agp_pb2.AGENT)
        try:
            async def ready(**fields: Any) -> list[bytes]:
                waiter = asyncio.get_running_loop().create_future()
                header = agp_pb2.Ready(service="test/ready/svc", instance="x", **fields)
                m.core.start_request(Cmd.READY, b"test/ready/svc", header.SerializeToString(),
                                     [], waiter, timeout=5.0)
                return await waiter

            with pytest.raises(Malformed):
                await ready(capacity=1, free_slots=2)
            assert r.stats.malformed_by["ready_free_slots"] == 1
            assert not r.table.instances
            await ready(capacity=0)
            assert r.table.instances[b"test/ready/svc/x"].capacity == 1
            await ready(capacity=3, free_slots=0)  # the same READY again: no slot now
            assert r.table.instances[b"test/ready/svc/x"].capacity == 0
        finally:
            await m.close()

    with router_in_thread() as r:
        asyncio.run(main(r))
