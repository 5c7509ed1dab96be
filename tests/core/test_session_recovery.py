"""A client across a router crash: which calls the new router will answer and which died with
the old one. Real router processes (SIGKILLed, restarted on the same port), a real echo agent
process, and a real AsyncMesh on this test's loop.

What the client sent while no router was there waits in its DEALER queue and reaches the new
router first; a monitor on the client's socket says when the old connection is gone, so what
the test sends after it is known to be in that queue, not in a dead TCP buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from agents.procs import ManagedProcess, agent_process, router_process
from mesh import Mesh
from mesh.aio import AsyncMesh
from mesh.errors import Error, Unavailable
from tests.helpers import until as _until
from tests.helpers import wait_for

SVC = "test/ns/echo"
DEADLINE = 20.0  # generous: 2 shared cores


async def until(cond: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition"
                ) -> Any:
    return await _until(cond, timeout, what)


async def served(m: AsyncMesh) -> bool:
    try:
        return bool(await m.request(SVC, "echo", 1, timeout=2) == 1)
    except Error:
        return False


async def until_served(m: AsyncMesh) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await served(m):
        assert time.monotonic() < deadline, "the agent never served"


async def in_flight(m: AsyncMesh) -> bool:
    services = await m.request("agp/router", "services", timeout=5)
    return any(i["inflight"] for s in services for i in s["instances"])


def _instances(probe: Mesh) -> list[str]:
    return [i["name"] for s in probe.request("agp/router", "services", timeout=5)
            if s["service"] == SVC for i in s["instances"]]


class Crash:
    """An insecure router process and an echo agent; ``kill`` crashes the router (SIGKILL)
    and waits until the client's connection to it is gone; ``restart`` starts another on
    the same ports."""

    def __init__(self, spawn: Callable[..., ManagedProcess]) -> None:
        self.spawn = spawn
        self.router = spawn(router_process(extra=["--insecure"]))
        self.endpoint = self.router.ready_info["router"]
        self.pub = self.router.ready_info["pub"]
        spawn(agent_process("agents.echo", self.endpoint, name="echo",
                            extra=["--namespace", "test/ns", "--instance", "one",
                                   "--insecure", "--drain-timeout", "1"]))
        # (each test leaves a handler running: a sleep, a stream never ended; the default
        # 30 s drain would outlast the teardown's 10 s SIGTERM wait and end in a SIGKILL)

    def kill(self, m: AsyncMesh) -> None:
        sock = m.core.sock
        assert sock is not None
        mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            self.router.kill()
            assert mon.poll(int(DEADLINE * 1000)), "the client never saw the router go"
            assert recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED
        finally:
            sock.disable_monitor()
            mon.close(linger=0)

    def restart(self) -> None:
        self.spawn(router_process(name="router2", bind=self.endpoint, pub_bind=self.pub,
                                  extra=["--insecure"]))

    def wait_agent(self) -> None:
        """Block until the agent serves at the (new) router: a probe of its own asks."""
        with Mesh.connect(self.endpoint, timeout=DEADLINE) as probe:
            wait_for(lambda: _instances(probe), timeout=DEADLINE,
                     message="the agent registered with the new router")


def test_a_call_sent_after_the_hello_the_new_router_answered_is_not_failed(spawn) -> None:
    """Sent behind the HELLO the new router answers, a call reaches that router behind it
    and is answered: failing it as "in flight at the restart" was wrong (a caller would
    retry what is being done). A call the old router took still fails, and one the new
    router refused before the HELLO is sent again."""
    crash = Crash(spawn)

    async def main() -> None:
        m = await AsyncMesh.connect(crash.endpoint, timeout=DEADLINE)
        try:
            core = m.core
            await until_served(m)
            sleeping = asyncio.ensure_future(m.request(SVC, "sleep", 30, timeout=60))
            deadline = time.monotonic() + DEADLINE
            while not await in_flight(m):
                assert time.monotonic() < deadline, "the sleep never started"
            core.liveness = 120.0  # no HELLO until the test lets it
            crash.kill(m)
            early = asyncio.ensure_future(m.request("agp/router", "ping", timeout=DEADLINE))
            await until(lambda: len(core.pending) == 2, what="the early ping sent")
            hello_at = core._hello_sent_at
            core.liveness = 0.3  # the router is silent: the client says HELLO (queued)
            await until(lambda: core._hello_sent_at > hello_at, what="a HELLO sent")
            late = asyncio.ensure_future(m.request("agp/router", "ping", timeout=DEADLINE))
            await until(lambda: len(core.pending) == 3, what="the late ping sent")
            core.liveness = 3.0
            crash.restart()
            outcome = await asyncio.wait_for(
                asyncio.gather(sleeping, early, late, return_exceptions=True), DEADLINE)
            assert isinstance(outcome[0], Unavailable), outcome  # died with the old router
            assert outcome[1] == "pong", outcome  # refused by the new one, sent again
            assert outcome[2] == "pong", outcome  # behind the HELLO: answered
            assert core.counters["late_replies"] == 0
        finally:
            await m.close()

    asyncio.run(main())


def test_a_stream_the_old_router_opened_fails_and_is_not_opened_anew_mid_way(spawn) -> None:
    """A chunk of an open stream meets the new router first (UNKNOWN_SESSION). Opening the
    stream again there would start the agent on the rest of it, the earlier chunks gone: it
    fails with Unavailable instead. A stream whose open no router answered is opened again,
    and works."""
    crash = Crash(spawn)

    async def main() -> None:
        m = await AsyncMesh.connect(crash.endpoint, timeout=DEADLINE)
        try:
            core = m.core
            await until_served(m)
            opened = await m.stream(SVC, "ingest", direct=False).open()
            await opened.write(b"a", raw=True)
            await opened.write(b"b", raw=True)
            assert opened.credits > 1
            core.heartbeat, core.liveness = 60.0, 120.0  # the client sends nothing unasked
            old_router = core.router_id
            crash.kill(m)
            await opened.write(b"c", raw=True)  # queued for the next router
            unopened = m.stream(SVC, "ingest", direct=False)
            opening = asyncio.ensure_future(unopened.open())
            await until(lambda: unopened.ident in core.pending, what="the second open sent")
            crash.restart()
            # the loop is held (the client reads nothing) until the agent serves at the new
            # router, so what the client does next is not a race with the agent's return
            crash.wait_agent()
            core.heartbeat, core.liveness = 1.0, 3.0
            await until(lambda: core.connected and core.router_id != old_router,
                        what="a session with the new router")
            await until(lambda: opened.ident not in core.pending, what="the stream failed")
            with pytest.raises(Unavailable):  # a write hears it at once, credits or not
                await opened.write(b"d", raw=True)
            closed = await asyncio.wait_for(
                asyncio.gather(opened.close(), return_exceptions=True), DEADLINE)
            # (opened anew, it answered as if the agent had the whole stream: 0 chunks)
            assert isinstance(closed[0], Unavailable), closed
            assert "lost this stream" in str(closed[0])
            assert core.counters["streams_lost_to_restart"] == 1
            await asyncio.wait_for(opening, DEADLINE)  # never answered: opened again
            await unopened.write(b"x", raw=True)
            await unopened.write(b"y", raw=True)
            result = await asyncio.wait_for(unopened.close(), DEADLINE)
            assert (result["chunks"], result["bytes"]) == (2, 2)
            assert await served(m)
        finally:
            await m.close()

    asyncio.run(main())
