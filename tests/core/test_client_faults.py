"""The client's faults found by review, each against a real router run in this process (its
own thread, ephemeral ports on 127.0.0.1) and a real AsyncMesh / Mesh client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import zmq

from mesh import batch, codec
from mesh.aio import AsyncMesh
from mesh.breaker import CircuitBreaker, State
from mesh.errors import CircuitOpen, ConfigError, DeadlineExceeded
from mesh.sync import Mesh
from mesh.wire import ROUTE, Cmd, Flag, pack_route
from proto import agp_pb2
from router.server import Router
from tests.helpers import router_in_thread

PING = "agp/router"  # answered by the router itself: no agent needed


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def _half_open_due(b: CircuitBreaker) -> None:
    """Open ``b`` with its reset timeout already past: the next call is the trial."""
    for _ in range(b.failure_threshold):
        b.on_failure()
    assert b.state is State.OPEN
    b.opened_at -= b.reset_timeout + 1.0


# ---------------------------------------------------------------- 1. breaker trial slot
def test_a_trial_call_that_never_leaves_gives_its_half_open_slot_back(router: Router) -> None:
    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        try:
            b = m.breaker(PING)
            assert b is not None
            # request: the trial is refused by its deadline before it is sent
            _half_open_due(b)
            with pytest.raises(DeadlineExceeded):
                await m.request(PING, "ping", timeout=0)
            assert b.state is State.HALF_OPEN  # abandoned: its slot back, not stuck
            await m.request(PING, "ping", timeout=5)  # the next trial goes, and closes it
            assert b.state is State.CLOSED
            # request_nowait: the trial's payload cannot be encoded
            _half_open_due(b)
            with pytest.raises(TypeError):
                m.request_nowait(PING, "ping", object())
            assert b.state is State.HALF_OPEN
            await m.request_nowait(PING, "ping", timeout=5)
            assert b.state is State.CLOSED
            _half_open_due(b)
            b.opened_at = b.clock()  # open, its reset timeout not past: calls fail at once
            with pytest.raises(CircuitOpen):
                await m.request(PING, "ping", timeout=5)
        finally:
            await m.close()

    asyncio.run(main())


# ---------------------------------------------------------------- 2. one bad message in a BATCH
SERVICE = "test/client/batch"


def _raw_agent(endpoint: str, ready: threading.Event, done: threading.Event) -> None:
    """An agent on a raw DEALER: takes two requests, then answers them in one BATCH of
    [PROGRESS for the first, REPLY to the first, REPLY to the second]."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        hello = agp_pb2.Hello(protocol_version=1, peer_name="raw").SerializeToString()
        sock.send_multipart([pack_route(Cmd.HELLO, Flag.BATCH, 0, 0, 1), b"", hello])
        msg = sock.recv_multipart() if sock.poll(5000) else None
        assert msg is not None
        assert msg[0][1] == Cmd.WELCOME
        r = agp_pb2.Ready(service=SERVICE, instance="raw1", capacity=10).SerializeToString()
        sock.send_multipart([pack_route(Cmd.READY, 0, 0, 0, 2), b"", r])
        msg = sock.recv_multipart() if sock.poll(5000) else None
        assert msg is not None
        assert msg[0][1] == Cmd.READY
        ready.set()
        requests: list[list[bytes]] = []
        for _ in range(20):  # bounded: two requests arrive (alone or batched)
            if len(requests) >= 2 or not sock.poll(5000):
                break
            msg = sock.recv_multipart()
            subs = batch.unpack(msg[1], ROUTE.unpack(msg[0])[4]) if msg[0][1] == Cmd.BATCH \
                else [msg]
            requests += [m for m in subs if m[0][1] == Cmd.REQUEST]
        assert len(requests) == 2
        first, second = (ROUTE.unpack(m[0])[5] for m in requests)
        crid1, crid2 = requests[0][1], requests[1][1]
        out = [[pack_route(Cmd.PROGRESS, 0, 0, 0, first), crid1, b"",
                *codec.encode({"fraction": 0.5})],
               [pack_route(Cmd.REPLY, Flag.RAW, 0, 0, first), crid1, b"", b"one"],
               [pack_route(Cmd.REPLY, Flag.RAW, 0, 0, second), crid2, b"", b"two"]]
        sock.send_multipart([batch.route_frame(len(out)), batch.pack(out)])
        done.wait(10)
    finally:
        sock.close(0)


def test_a_raising_callback_drops_only_its_own_message_of_a_batch(router: Router) -> None:
    ready, done = threading.Event(), threading.Event()
    agent = threading.Thread(target=_raw_agent, args=(router.endpoint, ready, done),
                             daemon=True)
    agent.start()

    def bad_progress(_fraction: float, _message: str) -> None:
        raise ValueError("a bug in the caller's progress callback")

    async def main() -> tuple[object, object, int]:
        assert await asyncio.to_thread(ready.wait, 5)
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        try:
            assert m.core.batching  # the router may batch what it sends this client
            malformed = m.core.counters["malformed"]
            one = m.request(SERVICE, "x", b"1", raw=True, timeout=5, on_progress=bad_progress)
            two = m.request(SERVICE, "x", b"2", raw=True, timeout=5)
            a, b = await asyncio.gather(one, two)
            return a, b, m.core.counters["malformed"] - malformed
        finally:
            done.set()
            await m.close()

    try:
        a, b, dropped = asyncio.run(main())
    finally:
        done.set()
        agent.join(10)
    assert (a, b) == (b"one", b"two")
    assert dropped == 1  # the progress report whose callback raised, counted


# ---------------------------------------------------------------- 3. closing from a callback
def test_closing_subscriptions_from_their_callbacks_spoils_no_other_delivery(
        router: Router) -> None:
    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=5)
        try:
            got: dict[str, list[object]] = {"a": [], "b": []}
            subs: dict[str, object] = {}

            def once(name: str):  # a "first message only" callback
                def cb(msg) -> None:
                    got[name].append(msg.data)
                    subs[name].close()
                return cb

            # "t/" alone under its prefix (closing it empties the prefix), then "t/x" twice
            subs["a"] = await m.subscribe("t/", once("a"))
            subs["b"] = await m.subscribe("t/x", once("b"))
            c = await m.subscribe("t/x")
            malformed = m.core.counters["malformed"]
            m.publish("t/x", 1)
            await m.flush(wait=True)
            assert (await c.aget(5)).data == 1
            m.publish("t/x", 2)
            await m.flush(wait=True)
            assert (await c.aget(5)).data == 2
            assert got == {"a": [1], "b": [1]}  # each once, then closed
            assert m.core.counters["malformed"] == malformed
        finally:
            await m.close()

    asyncio.run(main())


# ---------------------------------------------------------------- 4. sync face in a callback
def test_a_blocking_call_from_a_callback_on_the_io_thread_is_refused_at_once(
        router: Router) -> None:
    m = Mesh.connect(router.endpoint, timeout=5)
    try:
        outcome: list[BaseException | object] = []
        done = threading.Event()

        def cb(_msg) -> None:
            try:
                outcome.append(m.request(PING, "ping", timeout=1))
            except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
                outcome.append(exc)
            done.set()

        m.subscribe("t/sync", cb)
        m.publish("t/sync", 1)
        m.flush()
        assert done.wait(10)
        assert isinstance(outcome[0], ConfigError), outcome
        assert "request_nowait" in str(outcome[0])
        assert m.request(PING, "ping", timeout=5) is not None  # the I/O thread is fine
    finally:
        m.close()


def test_a_new_subscriber_is_not_charged_for_what_was_published_while_nobody_listened(
        router) -> None:
    from mesh import Mesh
    from tests.helpers import wait_for

    endpoint = router.endpoint
    with Mesh.connect(endpoint) as pub, Mesh.connect(endpoint) as sub_client:
        first = sub_client.subscribe("quiet.")
        for i in range(3):
            pub.publish("quiet.x", i)
        assert [first.get(timeout=10).data for _ in range(3)] == [0, 1, 2]
        first.close()
        for i in range(10):  # nobody here listens: numbered at the router all the same
            pub.publish("quiet.x", 100 + i)
        pub.flush(wait=True)
        again = sub_client.subscribe("quiet.")
        pub.publish("quiet.x", "after")
        assert again.get(timeout=10).data == "after"
        wait_for(lambda: again.received == 1, message="received")
        assert again.gaps == 0
        assert again.lost == 0
