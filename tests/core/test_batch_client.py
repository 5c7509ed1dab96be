"""The client's side of BATCH, against a router played by the test on a real ROUTER socket:
a lone request leaves alone (no wait for a batch), a burst leaves batched, and what cannot
be sent fails its request with Overloaded, counted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import zmq

from mesh import AsyncMesh, Overloaded
from mesh.errors import DeadlineExceeded
from mesh.wire import ROUTE, Cmd, Flag, pack_route
from proto import agp_pb2


class PlayedRouter:
    """Answers HELLO with a WELCOME that takes batches, then (while ``echo``) answers each
    REQUEST with a REPLY of its payload; counts what arrived on the wire."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.wire: list[int] = []  # per wire message: how many requests it carried
        self.echo = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from mesh import batch

        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            rid, *msg = self.sock.recv_multipart()
            _, cmd, _, _, value, ident = ROUTE.unpack(msg[0])
            if cmd == Cmd.HELLO:
                welcome = agp_pb2.Welcome(protocol_version=1, router_id="played",
                                          heartbeat_ms=1000).SerializeToString()
                self.sock.send_multipart([rid, pack_route(Cmd.WELCOME, Flag.BATCH, 0, 0, ident),
                                          b"", welcome])
                if not self.echo:
                    return  # and read nothing more: the client's queue fills up
                continue
            messages = batch.unpack(msg[1], value) if cmd == Cmd.BATCH else [msg]
            messages = [m for m in messages if m[0][1] == Cmd.REQUEST]
            if messages:
                self.wire.append(len(messages))
            for m in messages:
                rid_ident = ROUTE.unpack(m[0])[5]
                self.sock.send_multipart([rid, pack_route(Cmd.REPLY, Flag.RAW, 0, 0, rid_ident),
                                          b"", b"", m[3]])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def played() -> Iterator[PlayedRouter]:
    p = PlayedRouter()
    try:
        yield p
    finally:
        p.close()


def test_a_lone_request_goes_alone_and_a_burst_leaves_batched(played):
    async def main() -> list[bytes]:
        m = await AsyncMesh.connect(played.endpoint, breakers=False)
        try:
            assert m.core.batching
            assert await m.request("svc", "echo", b"alone", raw=True) == b"alone"
            assert played.wire == [1]  # sent at once, not held for a batch
            return await asyncio.gather(*(m.request("svc", "echo", b"%d" % i, raw=True)
                                          for i in range(100)))
        finally:
            await m.close()

    assert asyncio.run(main()) == [b"%d" % i for i in range(100)]
    burst = played.wire[1:]
    assert sum(burst) == 100
    assert len(burst) < 10  # one alone, then batches of up to FLUSH_AT
    assert max(burst) > 1


def test_requests_that_cannot_be_sent_fail_overloaded_and_are_counted(played):
    played.echo = False

    async def main() -> tuple[list[object], int]:
        m = await AsyncMesh.connect(played.endpoint, breakers=False, hwm=1)
        try:
            payload = b"q" * 16_000
            results = await asyncio.gather(
                *(m.request("svc", "echo", payload, raw=True, timeout=2) for _ in range(3000)),
                return_exceptions=True)
            return results, m.core.counters["send_errors"]
        finally:
            await m.close()

    results, send_errors = asyncio.run(main())
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    assert overloaded
    assert len(overloaded) == send_errors  # each one counted where it failed
    # the rest left and were never answered: their deadline passed; nothing hangs
    assert all(isinstance(r, (Overloaded, DeadlineExceeded)) for r in results)


def test_an_agent_answers_a_batch_of_requests_with_one_batch() -> None:
    """Replies made while a drain lasts leave together when it ends: ten requests in one
    BATCH are answered by one wire message carrying ten replies (not one, then nine)."""
    from mesh import batch
    from mesh.core import Core

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    wire: list[int] = []

    def play() -> None:
        if not sock.poll(10_000):
            return
        rid, route, *_ = sock.recv_multipart()  # HELLO
        welcome = agp_pb2.Welcome(protocol_version=1, router_id="played",
                                  heartbeat_ms=1000).SerializeToString()
        sock.send_multipart([rid, pack_route(Cmd.WELCOME, Flag.BATCH, 0, 0,
                                             ROUTE.unpack(route)[5]), b"", welcome])
        requests = [[pack_route(Cmd.REQUEST, Flag.RAW, 0, 1000, i), b"client", b"", b"%d" % i]
                    for i in range(1, 11)]
        sock.send_multipart([rid, *batch.wire(requests)])
        while sum(wire) < 10 and sock.poll(10_000):
            _, route, *rest = sock.recv_multipart()
            _, cmd, _, _, value, _ = ROUTE.unpack(route)
            msgs = batch.unpack(rest[0], value) if cmd == Cmd.BATCH else [[route, *rest]]
            replies = sum(1 for m in msgs if m[0][1] == Cmd.REPLY)
            if replies:
                wire.append(replies)

    async def main() -> None:
        core = Core(endpoint, kind=agp_pb2.AGENT)

        def answer(cmd: int, flags: int, value: int, ident: int, msg: list[bytes]) -> None:
            core.queue_frames([pack_route(Cmd.REPLY, Flag.RAW, 0, 0, ident), msg[1], b"",
                               msg[3]])

        core.on_inbound = answer
        player = threading.Thread(target=play, daemon=True)
        player.start()
        await core.start(timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, player.join, 10)
        await core.close()

    try:
        asyncio.run(main())
    finally:
        sock.close(0)
        ctx.term()
    assert wire == [10]
