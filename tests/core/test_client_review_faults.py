"""The client core's faults found by review, each against a real router run in this process
(its own thread, ephemeral ports on 127.0.0.1), a real AsyncMesh / Mesh client and, where
an agent is needed, a scripted agent on a raw DEALER."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from mesh import codec
from mesh.aio import AsyncMesh
from mesh.backoff import Backoff
from mesh.errors import Closed, Draining, ErrorCode, TooLarge
from mesh.sync import Mesh
from mesh.wire import MAX_TIMEOUT_MS, ROUTE, Cmd, error_frames, pack_route
from proto import agp_pb2
from router.server import Router
from tests.helpers import router_in_thread, until, wait_for

PING = "agp/router"  # answered by the router itself: no agent needed
SVC = "test/review/core"
LIMIT = 256 * 1024  # the router's max_message_bytes here


@pytest.fixture
def router() -> Iterator[Router]:
    """An insecure router in a thread, taking messages of at most ``LIMIT`` bytes."""
    with router_in_thread(max_message_bytes=LIMIT) as r:
        yield r


Answer = Callable[[int, bytes, threading.Event], list[bytes]]


def _scripted_agent(endpoint: str, answers: list[Answer], ready: threading.Event,
                    stop: threading.Event, go: threading.Event) -> None:
    """An agent of ``SVC`` on a raw DEALER: the n-th request it takes is answered with the
    frames ``answers[n](ident, crid, go)`` gives (which may wait for ``go``)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        hello = agp_pb2.Hello(protocol_version=1, peer_name="scripted").SerializeToString()
        sock.send_multipart([pack_route(Cmd.HELLO, 0, 0, 0, 1), b"", hello])
        assert sock.poll(5000)
        assert sock.recv_multipart()[0][1] == Cmd.WELCOME
        r = agp_pb2.Ready(service=SVC, instance="one", capacity=10).SerializeToString()
        sock.send_multipart([pack_route(Cmd.READY, 0, 0, 0, 2), b"", r])
        assert sock.poll(5000)
        assert sock.recv_multipart()[0][1] == Cmd.READY
        ready.set()
        for answer in answers:
            while not stop.is_set() and not sock.poll(50):
                pass
            if stop.is_set():
                return
            msg = sock.recv_multipart()
            assert msg[0][1] == Cmd.REQUEST
            ident = int.from_bytes(msg[0][8:16], "little")
            sock.send_multipart(answer(ident, msg[1], go))
        stop.wait(10)
    finally:
        sock.close(0)


@pytest.fixture
def agent(router: Router) -> Iterator[Callable[..., threading.Event]]:
    """Start a scripted agent of ``SVC`` (see ``_scripted_agent``); returns its ``go``."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(*answers: Answer) -> threading.Event:
        ready, go = threading.Event(), threading.Event()
        t = threading.Thread(target=_scripted_agent,
                             args=(router.endpoint, list(answers), ready, stop, go),
                             daemon=True)
        t.start()
        threads.append(t)
        assert ready.wait(10), "the scripted agent did not register"
        return go

    yield start
    stop.set()
    for t in threads:
        t.join(10)


def _reply(value: object) -> Answer:
    def answer(ident: int, crid: bytes, go: threading.Event) -> list[bytes]:
        return [pack_route(Cmd.REPLY, 0, 0, 0, ident), crid, b"", *codec.encode(value)]
    return answer


def _reply_on_go(value: object) -> Answer:
    def answer(ident: int, crid: bytes, go: threading.Event) -> list[bytes]:
        assert go.wait(10)
        return _reply(value)(ident, crid, go)
    return answer


def _draining(ident: int, crid: bytes, go: threading.Event) -> list[bytes]:
    """What an agent that began draining answers a call the router handed it meanwhile."""
    frames = error_frames(ErrorCode.DRAINING, "agent is draining", ident, crid)
    frames[0] = pack_route(Cmd.ERROR, 0, ErrorCode.DRAINING, 0, ident)
    return frames


# ---------------------------------------------------------------- 1. an oversized payload
def test_a_payload_the_router_cannot_take_fails_at_once_unsent_and_no_call_is_lost(
        router: Router, agent: Callable[..., threading.Event]) -> None:
    """A frame past twice the router's limit made libzmq cut the client's connection: the
    call waited out its whole deadline, and every other call in flight on that connection
    lost its reply. Now it is refused before it is sent, with TooLarge."""
    go = agent(_reply_on_go("held"))

    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        try:
            held = m.request_nowait(SVC, "hold", timeout=10)  # in flight meanwhile
            await until(lambda: router.stats.requests >= 1, 5, "the held call in flight")
            hellos, bytes_in = m.core._hellos, router.stats.bytes_in
            big = bytes(3 * LIMIT)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TooLarge):
                await m.request(PING, "ping", big, raw=True, timeout=3)
            with pytest.raises(TooLarge):
                await m.request_nowait(PING, "ping", big, raw=True, timeout=3)
            with pytest.raises(TooLarge):
                m.send_nowait(SVC, "record", big, raw=True)
            with pytest.raises(TooLarge):
                await m.send(SVC, "record", big, raw=True)
            assert loop.time() - t0 < 1.0  # refused at once, not at the deadline
            assert m.core.counters["refused_too_large"] == 4
            go.set()
            assert await held == "held"  # the connection lived on
            assert m.core._hellos == hellos  # no new session was needed
            assert await m.request(PING, "ping", timeout=3) == "pong"
            assert router.stats.bytes_in - bytes_in < LIMIT  # nothing big was sent
            # what the router may take still goes (and one just past its limit is its to refuse)
            assert await m.request(PING, "ping", bytes(LIMIT // 2), raw=True) == "pong"
        finally:
            await m.close()

    asyncio.run(main())


# ---------------------------------------------------------------- 2. a draining agent
def test_a_call_a_draining_agent_refused_unrun_is_retried(
        router: Router, agent: Callable[..., threading.Event]) -> None:
    """An agent that begins draining refuses (DRAINING) what the router handed it before
    its goodbye arrived: no handler ran, so a call with retries must go again."""
    agent(_draining, _reply("second"), _draining)

    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        try:
            assert await m.request(SVC, "echo", 1, retries=1, timeout=5,
                                   backoff=Backoff(base=0.01)) == "second"
            with pytest.raises(Draining):  # no retries asked: the refusal is the answer
                await m.request(SVC, "echo", 1, timeout=5)
        finally:
            await m.close()

    asyncio.run(main())


# ---------------------------------------------------------------- 3. close during a backoff
NOWHERE = "test/review/nowhere"  # no such service: refused (NoSuchService), retried
LONG_WAIT = Backoff(base=5.0, cap=5.0, jitter=False)


def test_close_fails_a_sync_call_waiting_out_its_retry_backoff_with_closed_at_once(
        router: Router) -> None:
    """The retry slept on the mesh's loop, which close() stops: the caller got
    DeadlineExceeded when its whole timeout (+5 s) was over, not Closed."""
    m = Mesh.connect(router.endpoint, timeout=5)
    out: dict[str, object] = {}

    def call() -> None:
        try:
            m.request(NOWHERE, "x", timeout=30, retries=10, backoff=LONG_WAIT)
        except Exception as exc:
            out["exc"] = exc
        out["at"] = time.monotonic()

    t = threading.Thread(target=call, daemon=True)
    try:
        t.start()
        wait_for(lambda: router.stats.drops["no_such_service"] >= 1, 5,
                 message="the first attempt refused")
    finally:
        closed_at = time.monotonic()
        m.close()
    t.join(3)
    assert not t.is_alive(), "the caller still waits after close()"
    assert isinstance(out["exc"], Closed), out
    assert float(out["at"]) - closed_at < 2.0  # type: ignore[arg-type]
    assert router.stats.drops["no_such_service"] == 1  # and it was not tried again


def test_close_fails_an_async_call_waiting_out_its_retry_backoff_with_closed_at_once(
        router: Router) -> None:
    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        call = asyncio.create_task(m.request(NOWHERE, "x", timeout=30, retries=10,
                                             backoff=LONG_WAIT))
        try:
            await until(lambda: router.stats.drops["no_such_service"] >= 1, 5,
                        "the first attempt refused")
        finally:
            await m.close()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Closed):
            await asyncio.wait_for(call, 3)
        assert loop.time() - t0 < 1.0

    asyncio.run(main())


def test_a_backoff_cancelled_by_its_caller_leaves_nothing_behind(router: Router) -> None:
    async def main() -> None:
        async with await AsyncMesh.connect(router.endpoint, timeout=5) as m:
            call = asyncio.create_task(m.request(NOWHERE, "x", timeout=30, retries=10,
                                                 backoff=LONG_WAIT))
            await until(lambda: m.core._pauses, 5, "the retry waiting")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not m.core._pauses

    asyncio.run(main())


# ---------------------------------------------------------------- a very long deadline
def test_a_deadline_past_the_wires_longest_is_carried_as_the_longest(router: Router) -> None:
    """Sixty days: the route frame holds at most 2**32 ms (it raised struct.error), and the
    router takes a deadline past a day for none (its 30 s default): it goes as a day."""
    sent: list[int] = []

    async def main() -> None:
        async with await AsyncMesh.connect(router.endpoint) as m:
            real = m.core.send_frames

            def tap(frames: list[bytes]) -> None:
                if frames[0][1] == Cmd.REQUEST:
                    sent.append(ROUTE.unpack(frames[0])[4])
                real(frames)

            m.core.send_frames = tap  # type: ignore[method-assign]
            assert await m.request(PING, "ping", timeout=60 * 24 * 3600) == "pong"

    asyncio.run(main())
    assert sent == [MAX_TIMEOUT_MS]
