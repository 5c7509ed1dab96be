"""A handler thread past its deadline across a router restart: the new router counts nothing
in flight, so the agent offers it only its free threads (none: 0, known but sent nothing) and
gives the slot back when the thread returns. Otherwise calls sent to a pool whose only
thread is hung wait there, unseen, and time out while another instance idles.

Real routers in threads of this process (the second on the first's ports), the agents and
a client on the test's loop, real sockets on loopback; hung handlers are let go by a
``threading.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from mesh import AsyncMesh
from mesh.errors import Error
from tests.core.hung_pool import (
    DEADLINE,
    SVC,
    _client,
    _overrun,
    _restart,
    _services,
    _started,
    _until_seen,
)
from tests.helpers import router_in_thread, until


def test_after_a_router_restart_no_call_waits_behind_a_hung_thread(no_identity: None) -> None:
    gate = threading.Event()

    async def main() -> None:
        with contextlib.ExitStack() as stack, contextlib.ExitStack() as old:
            r1 = old.enter_context(router_in_thread())
            endpoint = r1.endpoint
            a, a_serving = await _started(endpoint, gate, "a", 1)
            b, b_serving = await _started(endpoint, gate, "b", 1)
            m: AsyncMesh | None = None
            try:
                m1 = await AsyncMesh.connect(endpoint, breakers=False)
                try:
                    await _overrun(m1, a)
                finally:
                    await m1.close()
                r2 = await _restart(old, stack, r1, a, b)
                m = await _client(endpoint, r2)
                await _until_seen(m, "b", 1)
                # a's only thread still runs: the new router sends it nothing
                for i in range(4):
                    assert await m.request(SVC, "work", i, timeout=1.0) == "b"
                with pytest.raises(Error):  # pinned to a: refused at once, not timed out
                    await asyncio.wait_for(m.request(f"{SVC}/a", "work", 1, timeout=30.0), 5)
                gate.set()  # its thread returns: a offers its slot again
                await _until_seen(m, "a", 1)
                assert await m.request(f"{SVC}/a", "work", 1, timeout=2.0) == "a"
                assert a.dropped.get("handler_overrun") == 1
            finally:
                gate.set()
                if m is not None:
                    await m.close()
                for agent, serving in ((a, a_serving), (b, b_serving)):
                    agent.stop()
                    await asyncio.wait_for(serving, 10)

    asyncio.run(main())


def test_after_a_router_restart_a_pool_offers_only_its_free_threads(no_identity: None) -> None:
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
                    await _overrun(m1, a)
                finally:
                    await m1.close()
                r2 = await _restart(old, stack, r1, a)
                m = await _client(endpoint, r2)
                assert (await _services(m))["a"]["capacity"] == 1
                # its one free thread takes one call; a second is refused, not queued
                a.gate = release
                held = asyncio.ensure_future(m.request(SVC, "work", "hang", timeout=10.0))
                await until(lambda: len(a.hung) == 2, DEADLINE, what="the second call running")
                with pytest.raises(Error):
                    await asyncio.wait_for(m.request(f"{SVC}/a", "work", 1, timeout=30.0), 5)
                gate.set()  # the overrunning thread returns: both threads are offered
                await _until_seen(m, "a", 2)
                assert await m.request(f"{SVC}/a", "work", 1, timeout=2.0) == "a"
                release.set()
                assert await held == "a"
            finally:
                gate.set()
                release.set()
                if m is not None:
                    await m.close()
                a.stop()
                await asyncio.wait_for(a_serving, 10)

    asyncio.run(main())

