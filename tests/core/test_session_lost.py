"""A session the same router lost without restarting (it forgot the peer: a goodbye, an
expired liveness, a connection re-made under a new routing id): the router numbers each new
session in its WELCOME, and a client that hears another number from the same router fails
at once, with Unavailable, the calls it sent in the lost session (their replies go to a
forgotten or dead connection) instead of letting them wait out their deadlines, and moves
its epoch on as a restart does; pub/sub (not tied to the router's peer) goes on unrestarted.

A real router in a thread of this process, the agent and clients on the test's loop, real
sockets on loopback; the agent's handler is held by a ``threading.Event``. The unit tests
feed WELCOME frames straight to a Core that has no socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mesh import AsyncMesh
from mesh.core import Core, Pending
from mesh.errors import Unavailable
from mesh.wire import PROTOCOL_VERSION, Cmd, pack_route
from proto import agp_pb2
from tests.core.hung_pool import SVC, _started
from tests.helpers import router_in_thread, until

DEADLINE = 20.0  # generous: 2 shared cores
TOPIC = "test/lost/news"


def _goodbye(core: Core) -> None:
    """The router forgets the session (as when it expires it), the connection stays: a
    DISCONNECT from the client's own socket, the client not knowing it was sent."""
    assert core.sock is not None
    core.sock.send_multipart([pack_route(Cmd.DISCONNECT), b""])


def _reconnect(core: Core) -> None:
    """The connection is re-made: the router sees a new routing id (it does not set one),
    and replies to the old one go nowhere."""
    assert core.sock is not None
    core.sock.disconnect(core.endpoint)
    core.sock.connect(core.endpoint)


async def _wind_down(gate: threading.Event, meshes: tuple[AsyncMesh | None, ...], agent: Any,
                     serving: asyncio.Future[None]) -> None:
    """Let the held handler go, close the clients, stop the agent and wait for it."""
    gate.set()
    for mesh in meshes:
        if mesh is not None:
            await mesh.close()
    agent.stop()
    await asyncio.wait_for(serving, 10)


FAULTS: dict[str, Callable[[Core], None]] = {"goodbye": _goodbye, "reconnect": _reconnect}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_lost_session_fails_its_calls_at_once_and_keeps_pubsub(
        no_identity: None, fault: str) -> None:
    gate = threading.Event()

    async def main(r: Any) -> None:
        a, serving = await _started(r.endpoint, gate, "a", 2)
        m: AsyncMesh | None = None
        p: AsyncMesh | None = None
        try:
            m = await AsyncMesh.connect(r.endpoint, breakers=False, timeout=DEADLINE)
            p = await AsyncMesh.connect(r.endpoint, breakers=False, timeout=DEADLINE)
            sub = await m.subscribe(TOPIC, timeout=DEADLINE)
            p.publish(TOPIC, 1)
            await p.flush(wait=True, timeout=DEADLINE)
            assert (await sub.aget(DEADLINE)).data == 1
            core = m.core
            assert core.welcome is not None
            before, epoch = core.welcome.session_id, core.epoch
            # pub/sub's numbering as the new session's WELCOME leaves it (kept: not restarted)
            numbered: list[bool] = []
            core.on_session = lambda: numbered.append(
                TOPIC.encode() in core.subs.numbering.expected)
            held = asyncio.ensure_future(m.request(SVC, "work", "hang", timeout=30))
            await until(lambda: a.hung, DEADLINE, what="the call running at the agent")

            FAULTS[fault](core)
            # refused (UNKNOWN_SESSION) by the router that forgot the session: HELLO again,
            # and sent again in the new session, not failed
            ping = asyncio.ensure_future(m.request("agp/router", "ping", timeout=DEADLINE))
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="lost this client's session"):
                await asyncio.wait_for(held, 10)  # not at its 30 s deadline
            assert time.monotonic() - t0 < 10
            await ping
            assert core.counters.get("sessions_lost") == 1
            assert core.epoch == epoch + 1
            assert core.welcome.session_id not in (0, before)
            assert core.router_id == r.config.router_id  # the same router: no restart
            assert numbered == [True]

            assert await m.request(SVC, "work", 1, timeout=DEADLINE) == "a"
            p.publish(TOPIC, 2)
            await p.flush(wait=True, timeout=DEADLINE)
            assert (await sub.aget(DEADLINE)).data == 2
            assert (sub.gaps, sub.lost) == (0, 0)
            assert core.counters["sessions_lost"] == 1  # (one loss, one count)
        finally:
            await _wind_down(gate, (m, p), a, serving)

    with router_in_thread() as r:
        asyncio.run(main(r))


def test_a_token_refresh_keeps_the_session_and_its_calls(no_identity: None) -> None:
    """A HELLO on a live session (a fresh token) is answered with the same session number:
    nothing fails, the epoch stays. Another connection has another number."""
    gate = threading.Event()

    async def main(r: Any) -> None:
        a, serving = await _started(r.endpoint, gate, "a", 1)
        m: AsyncMesh | None = None
        p: AsyncMesh | None = None
        try:
            m = await AsyncMesh.connect(r.endpoint, breakers=False, timeout=DEADLINE)
            p = await AsyncMesh.connect(r.endpoint, breakers=False, timeout=DEADLINE)
            core = m.core
            assert core.welcome is not None
            assert p.core.welcome is not None
            sid, epoch = core.welcome.session_id, core.epoch
            assert sid
            assert p.core.welcome.session_id not in (0, sid)
            held = asyncio.ensure_future(m.request(SVC, "work", "hang", timeout=DEADLINE))
            await until(lambda: a.hung, DEADLINE, what="the call running at the agent")
            core.refresh_token()
            assert core._live_hellos  # (its WELCOME is awaited)
            await until(lambda: not core._live_hellos, DEADLINE, what="the refresh answered")
            assert core.welcome.session_id == sid
            assert core.epoch == epoch
            assert "sessions_lost" not in core.counters
            assert not held.done()
            gate.set()
            assert await held == "a"
        finally:
            await _wind_down(gate, (m, p), a, serving)

    with router_in_thread() as r:
        asyncio.run(main(r))


# ---------------------------------------------------------------- WELCOMEs fed to a Core


def _welcome(core: Core, ident: int, router_id: str, session_id: int, *, live: bool = False
             ) -> None:
    """The WELCOME answering a HELLO ``ident`` (the next HELLO number), as the router sends
    it; ``live``: that HELLO was said on a live session (a token refresh)."""
    core._hellos += 1
    core._hello_ids[ident] = core._hellos
    if live:
        core._live_hellos.add(ident)
    w = agp_pb2.Welcome(protocol_version=PROTOCOL_VERSION, router_id=router_id,
                        session_id=session_id, pub_endpoint="tcp://127.0.0.1:1")
    core._on_welcome([pack_route(Cmd.WELCOME, 0, 0, 0, ident), b"", w.SerializeToString()],
                     ident)


def _call(core: Core, ident: int) -> concurrent.futures.Future[Any]:
    """A request sent now (after the last HELLO), waiting for its reply."""
    waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
    frames = [pack_route(Cmd.REQUEST, 0, 0, 30_000, ident), b"svc", b""]
    core.pending[ident] = Pending(waiter, frames, 1e12, core._hellos)
    return waiter


def _unavailable(f: concurrent.futures.Future[Any]) -> str:
    """The message of the Unavailable ``f`` failed with (it must have, already)."""
    assert f.done(), "the call still waits"
    exc = f.exception(0)
    assert isinstance(exc, Unavailable), exc
    return exc.message


def test_welcomes_of_one_router_tell_a_lost_session_from_a_stale_answer() -> None:
    core = Core("tcp://127.0.0.1:1")
    numbering = core.subs.numbering.expected
    _welcome(core, 1, "r1", 5)
    numbering[b"t"] = 7  # pub/sub: the router's next number on a topic
    assert core.connected
    assert core.epoch == 0
    first = _call(core, 100)
    # the answer to a HELLO resent while the session was up (a partition): nothing changes
    _welcome(core, 2, "r1", 5)
    assert core.counters["stale_welcomes"] == 1
    assert not first.done()
    assert core.epoch == 0
    # the router forgot the session: a refusal (UNKNOWN_SESSION) made the client HELLO again
    core.connected = False
    _welcome(core, 3, "r1", 6)
    assert "lost this client's session" in _unavailable(first)
    assert core.counters["sessions_lost"] == 1
    assert core.epoch == 1
    second = _call(core, 101)
    _welcome(core, 4, "r1", 6)  # stale again, of the new session
    assert core.counters["stale_welcomes"] == 2
    assert not second.done()
    # a token refresh that finds the session gone (forgotten while this side saw nothing)
    _welcome(core, 5, "r1", 7, live=True)
    assert "lost this client's session" in _unavailable(second)
    assert core.counters["sessions_lost"] == 2
    assert core.epoch == 2
    # a resent HELLO's answer with another number (the router forgot the session between
    # the HELLOs a partition held) is a lost session too, not a stale answer
    third = _call(core, 102)
    _welcome(core, 6, "r1", 8)
    assert "lost this client's session" in _unavailable(third)
    assert core.counters["sessions_lost"] == 3
    assert core.epoch == 3
    assert core.counters["stale_welcomes"] == 2
    assert numbering == {b"t": 7}  # pub/sub is not the router's peer: not restarted
    # a restart is a restart (its own message, pub/sub's numbering anew), not a lost session
    fourth = _call(core, 103)
    core.connected = False
    _welcome(core, 7, "r2", 1)
    assert "restarted" in _unavailable(fourth)
    assert core.counters["sessions_lost"] == 3
    assert core.epoch == 4
    assert not numbering


def test_a_router_that_numbers_no_session_changes_nothing() -> None:
    """Session 0 (an older router) tells nothing: neither it nor a number after it (the
    kept one is 0) is a lost session."""
    core = Core("tcp://127.0.0.1:1")
    _welcome(core, 1, "r1", 0)
    call = _call(core, 100)
    core.connected = False
    _welcome(core, 2, "r1", 0)
    core.connected = False
    _welcome(core, 3, "r1", 4)
    assert not call.done()
    assert core.epoch == 0
    assert "sessions_lost" not in core.counters
    core.connected = False
    _welcome(core, 4, "r1", 0)  # (back to a number: kept is 4, this says none)
    assert not call.done()
    assert core.epoch == 0
