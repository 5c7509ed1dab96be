"""A draining agent does not announce itself to a router that restarts mid-drain: the new
router would route fresh calls to it, and it would refuse every one (DRAINING) while an
instance that takes work stood by.

Real routers in threads of this process (the second on the first one's port), the agent on
the test's loop, real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agents.base import Agent, action
from agents.context import Context
from router.config import RouterConfig
from router.server import Router
from tests.helpers import until

SVC = "test/drain/held"


class Held(Agent):
    """``hold`` waits until the test lets it go: a drain waits for it."""

    name = "held"
    namespace = "test/drain"
    register_with_registry = False
    drain_timeout = 20.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.go = asyncio.Event()

    @action()
    async def hold(self, data: Any, ctx: Context) -> Any:
        await self.go.wait()
        return data


def _start(bind: str) -> tuple[Router, threading.Thread]:
    r = Router(RouterConfig(bind=bind, pub_bind="tcp://127.0.0.1:0", liveness=1.0,
                            heartbeat_interval=0.2))
    r.start()
    thread = threading.Thread(target=r.run, daemon=True)
    thread.start()
    return r, thread


def _stop(r: Router, thread: threading.Thread) -> None:
    r.stop()
    thread.join(10)
    assert not thread.is_alive(), "the router thread did not stop"


def test_a_router_restarted_mid_drain_gets_no_ready(no_identity: None) -> None:
    first, first_thread = _start("tcp://127.0.0.1:0")
    endpoint = first.endpoint
    second: list[tuple[Router, threading.Thread]] = []

    async def main() -> list[bytes]:
        agent = Held(endpoint=endpoint)
        await agent.start()
        serving = asyncio.ensure_future(agent.serve())
        try:
            held = asyncio.ensure_future(agent.mesh.request(SVC, "hold", 1, timeout=30))
            await until(lambda: agent._tasks, what="the call in flight at the agent")
            agent.stop()  # the drain waits for the held call
            await until(lambda: agent.draining, what="the drain begun")
            old = agent.core.router_id
            await asyncio.to_thread(_stop, first, first_thread)
            second.append(await asyncio.to_thread(_start, endpoint))
            await until(lambda: agent.core.connected and agent.core.router_id != old,
                        timeout=20, what="a session with the new router")
            for _ in range(3):  # a READY would be queued within these loop turns ...
                await asyncio.sleep(0)
            # ... and a ping on the same connection is answered after it was taken
            assert await agent.mesh.request("agp/router", "ping", timeout=10) == "pong"
            held.cancel()
            return list(second[0][0].table.instances)
        finally:
            agent.go.set()
            await asyncio.wait_for(serving, 30)

    try:
        instances = asyncio.run(main())
    finally:
        for r, t in second:
            _stop(r, t)
        if first_thread.is_alive():
            _stop(first, first_thread)
    assert instances == []
