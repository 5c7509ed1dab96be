"""Agents whose thread-pool handler hangs past its deadline, and routers restarted under
them: what the overrun, restart and READY-capacity tests share.

``Worker.work("hang")`` holds its thread until the test lets ``gate`` go, never looking at
``ctx.cancelled`` (as a long fit does); ``_restart`` stops a router in a thread and starts
another on its ports, returning once every agent is in session with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh
from mesh.errors import DeadlineExceeded
from mesh.wire import Cmd
from tests.helpers import router_in_thread, until

SVC = "test/overrun/work"
DEADLINE = 20.0  # generous: 2 shared cores


class Worker(Agent):
    """``work`` answers with its instance; ``"hang"`` holds its thread until let go, never
    looking at ``ctx.cancelled`` (as a long fit does)."""

    name = "work"
    namespace = "test/overrun"
    register_with_registry = False
    direct_streams = False
    drain_timeout = 20.0

    def __init__(self, gate: threading.Event, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate
        self.hung: list[int] = []  # one entry per "hang" call begun

    @action()
    def work(self, data: Any, ctx: Context) -> Any:
        if data == "hang":
            self.hung.append(1)
            self.gate.wait(30)
        return self.instance


async def _started(endpoint: str, gate: threading.Event, instance: str,
                   capacity: int) -> tuple[Worker, asyncio.Future[None]]:
    agent = Worker(gate, endpoint=endpoint, instance=instance, capacity=capacity)
    await agent.start()
    return agent, asyncio.ensure_future(agent.serve())


async def _overrun(m: AsyncMesh, agent: Worker) -> None:
    """A call to ``agent`` whose handler hangs past its deadline: its caller hears so at
    the deadline; then (the agent's clock, not the caller's) the agent gives up on it."""
    overruns = agent.dropped.get("handler_overrun", 0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await m.request(agent.instance_name, "work", "hang", timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    await until(lambda: agent.dropped.get("handler_overrun", 0) == overruns + 1,
                what="the overrun counted")


async def _services(m: AsyncMesh) -> dict[str, dict[str, Any]]:
    """The router's view of SVC's instances, by instance name."""
    services = await m.request("agp/router", "services", timeout=5)
    return {i["name"].rsplit("/", 1)[-1]: i for s in services if s["service"] == SVC
            for i in s["instances"]}


async def _until_seen(m: AsyncMesh, instance: str, capacity: int) -> None:
    """Until the router lists ``instance`` with ``capacity``."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while (await _services(m)).get(instance, {}).get("capacity") != capacity:
        assert asyncio.get_running_loop().time() < deadline, f"{instance} never at {capacity}"
        await asyncio.sleep(0.02)


def _settled(agent: Worker, router: Any) -> bool:
    """In a session with ``router``, its READY (if any) answered."""
    core = agent.core
    return bool(core is not None and core.connected
                and core.router_id == router.config.router_id
                and not any(p.frames and p.frames[0][1] == Cmd.READY
                            for p in core.pending.values()))


async def _restart(old: contextlib.ExitStack, stack: contextlib.ExitStack, r1: Any,
                   *agents: Worker, **config: Any) -> Any:
    """Stop ``r1``, start another router (``config``) on its ports; return once every agent
    has a session with it and its READY, if it sent one, was answered."""
    endpoint, pub = r1.endpoint, r1.pub_endpoint
    old.close()
    # (zmq closes the old listeners in its IO thread, a moment after the router's sockets)
    await until(lambda: not _listening(endpoint) and not _listening(pub), DEADLINE,
                what="the old router's ports free")
    r2 = stack.enter_context(router_in_thread(bind=endpoint, pub_bind=pub, **config))
    await until(lambda: all(_settled(a, r2) for a in agents), DEADLINE,
                what="the agents in session with the new router")
    return r2


def _listening(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except ConnectionRefusedError:
        return False
    return True


async def _client(endpoint: str, r2: Any) -> AsyncMesh:
    m = await AsyncMesh.connect(endpoint, breakers=False, timeout=DEADLINE)
    await until(lambda: m.core.router_id == r2.config.router_id, DEADLINE,
                what="the client in session with the new router")
    return m
