"""BATCH through a real router: real sockets on 127.0.0.1, raw DEALER peers speaking the wire.

The router runs in this thread and is pumped (poll, then drain) until a condition holds, so
every step is deterministic: what it forwards, what it answers, what it counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from mesh import batch
from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd, Flag, pack_route, parse_error, parse_route
from proto import agp_pb2
from router.config import RouterConfig
from router.server import Router

SERVICE = b"test/batch/echo"
OPEN: list[zmq.Socket] = []  # every socket a test opened, closed by the ctx fixture


class Peer:
    """A DEALER that says HELLO (taking batches or not) and reads messages one by one,
    opening the BATCHes it gets (it counts them)."""

    def __init__(self, ctx: zmq.Context, router: Router, *, batches: bool, rcvhwm: int = 1000
                 ) -> None:
        self.router = router
        self.sock = ctx.socket(zmq.DEALER)
        OPEN.append(self.sock)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.connect(router.endpoint)
        self.batches = batches
        self.wire_messages = 0
        self.batches_received = 0
        self.inbox: list[list[bytes]] = []
        hello = agp_pb2.Hello(protocol_version=1, peer_name="raw").SerializeToString()
        self.send([pack_route(Cmd.HELLO, Flag.BATCH if batches else 0, 0, 0, 1), b"", hello])
        welcome = self.expect(lambda m: m[0][1] == Cmd.WELCOME)
        assert bool(welcome[0][2] & Flag.BATCH)  # the router says it takes batches

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def send_batch(self, messages: list[list[bytes]]) -> None:
        self.send([batch.route_frame(len(messages)), batch.pack(messages)])

    def read(self) -> None:
        while self.sock.poll(0):
            msg = self.sock.recv_multipart()
            self.wire_messages += 1
            if msg[0][1] == Cmd.BATCH:
                self.batches_received += 1
                self.inbox.extend(batch.unpack(msg[1], ROUTE.unpack(msg[0])[4]))
            else:
                self.inbox.append(msg)

    def expect(self, match: Callable[[list[bytes]], bool], timeout: float = 5.0) -> list[bytes]:
        def found() -> list[bytes] | None:
            self.read()
            return next((m for m in self.inbox if match(m)), None)

        msg = pump(self.router, found, timeout)
        self.inbox.remove(msg)
        return msg


def pump(router: Router, condition: Callable[[], object], timeout: float = 10.0) -> object:
    """Run the router's loop (poll, drain, flush) until ``condition`` is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s")
        if router.sock.poll(5):
            router._drain()


def request_frames(ident: int, data: bytes, dest: bytes = SERVICE) -> list[bytes]:
    header = agp_pb2.Envelope(action="echo").SerializeToString()
    return [pack_route(Cmd.REQUEST, Flag.RAW, 0, 10_000, ident), dest, header, data]


def error_code(msg: list[bytes]) -> ErrorCode:
    return parse_error(parse_route(msg[0]), msg)[0]


def serve(agent: Peer, *, batched: bool) -> int:
    """Answer every REQUEST the agent holds with a REPLY carrying its payload."""
    replies = []
    for msg in [m for m in agent.inbox if m[0][1] == Cmd.REQUEST]:
        agent.inbox.remove(msg)
        ident = ROUTE.unpack(msg[0])[5]
        replies.append([pack_route(Cmd.REPLY, Flag.RAW, 0, 0, ident), msg[1], b"", msg[3]])
    if batched and len(replies) > 1:
        for at in range(0, len(replies), batch.FLUSH_AT):
            agent.send_batch(replies[at:at + batch.FLUSH_AT])
    else:
        for r in replies:
            agent.send(r)
    return len(replies)


def register(agent: Peer, instance: str, capacity: int = 1000) -> None:
    ready = agp_pb2.Ready(service=SERVICE.decode(), instance=instance, capacity=capacity)
    agent.send([pack_route(Cmd.READY, 0, 0, 0, 2), b"", ready.SerializeToString()])
    agent.expect(lambda m: m[0][1] == Cmd.READY)


@pytest.fixture
def router(request: pytest.FixtureRequest) -> Iterator[Router]:
    """A router on ephemeral ports; ``@pytest.mark.parametrize("router", [hwm],
    indirect=True)`` sets its per-peer queue."""
    hwm = getattr(request, "param", 1000)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0", hwm=hwm))
    r.start()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    try:
        yield c
    finally:
        while OPEN:
            OPEN.pop().close(linger=0)
        c.term()


def replies_of(peer: Peer) -> dict[int, bytes]:
    return {ROUTE.unpack(m[0])[5]: m[3] for m in peer.inbox if m[0][1] == Cmd.REPLY}


def test_a_batch_of_requests_crosses_as_batches_and_is_answered_one_by_one(router, ctx):
    agent = Peer(ctx, router, batches=True)
    register(agent, "one")
    client = Peer(ctx, router, batches=True)
    client.send_batch([request_frames(i, b"payload-%d" % i) for i in range(1, 41)])
    pump(router, lambda: (agent.read(), sum(m[0][1] == Cmd.REQUEST for m in agent.inbox) == 40)[1])
    assert agent.batches_received >= 1
    assert agent.wire_messages < 40  # forwarded as batches, not one by one
    assert serve(agent, batched=True) == 40
    pump(router, lambda: (client.read(), len(replies_of(client)) == 40)[1])
    assert replies_of(client) == {i: b"payload-%d" % i for i in range(1, 41)}
    assert client.wire_messages < 40
    assert router.stats.requests == 40
    assert router.stats.replies == 40
    assert router.stats.batched_in == 80  # the 40 requests and the 40 replies came batched
    assert router.stats.batches_out >= 2
    assert router.stats.as_dict()["batches"]["messages_out"] == router.stats.batched_out


def test_a_peer_that_takes_no_batches_gets_every_message_alone(router, ctx):
    agent = Peer(ctx, router, batches=True)
    register(agent, "one")
    client = Peer(ctx, router, batches=False)
    for i in range(1, 41):
        client.send(request_frames(i, b"p%d" % i))
    pump(router, lambda: (agent.read(), sum(m[0][1] == Cmd.REQUEST for m in agent.inbox) == 40)[1])
    serve(agent, batched=True)
    pump(router, lambda: (client.read(), len(replies_of(client)) == 40)[1])
    assert client.batches_received == 0
    assert client.wire_messages == 40 + 1  # and its WELCOME, read before


def test_a_batch_before_hello_is_an_unknown_session(router, ctx):
    sock = ctx.socket(zmq.DEALER)
    OPEN.append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(router.endpoint)
    sock.send_multipart([batch.route_frame(2),
                         batch.pack([request_frames(1, b"a"), request_frames(2, b"b")])])
    msg = pump(router, lambda: sock.poll(0) and sock.recv_multipart())
    assert msg[0][1] == Cmd.ERROR
    assert error_code(msg) == ErrorCode.UNKNOWN_SESSION
    assert router.stats.requests == 0


@pytest.mark.parametrize("body", [b"", b"\x01\x00\xff\xff\xff\xff", b"garbage" * 10])
def test_a_malformed_batch_is_refused_and_the_session_goes_on(router, ctx, body):
    agent = Peer(ctx, router, batches=False)
    register(agent, "one")
    client = Peer(ctx, router, batches=True)
    client.send([batch.route_frame(3), body])
    err = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert error_code(err) == ErrorCode.MALFORMED
    assert router.stats.malformed == 1
    client.send(request_frames(9, b"after"))
    pump(router, lambda: (agent.read(), agent.inbox)[1])
    serve(agent, batched=False)
    pump(router, lambda: (client.read(), replies_of(client))[1])
    assert replies_of(client) == {9: b"after"}


def test_a_request_without_header_is_refused_naming_the_call_and_counted_by_reason(router,
                                                                                  ctx):
    client = Peer(ctx, router, batches=False)
    client.send([pack_route(Cmd.REQUEST, 0, 0, 10_000, 42), SERVICE])  # no header, no body
    err = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert parse_route(err[0])[5] == 42  # the caller's call ends with this, not its deadline
    assert error_code(err) == ErrorCode.MALFORMED
    client.send([pack_route(Cmd.WELCOME, 0, 0, 0, 43), b""])  # a command peers may not send
    client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert router.stats.malformed_by == {"short_request": 1, "bad_command": 1}
    assert router.stats.as_dict()["malformed"] == 2


def test_a_nested_batch_or_a_hello_inside_is_refused_and_the_rest_served(router, ctx):
    agent = Peer(ctx, router, batches=False)
    register(agent, "one")
    client = Peer(ctx, router, batches=True)
    hello = agp_pb2.Hello(protocol_version=1, peer_name="sneaky").SerializeToString()
    nested = batch.pack([request_frames(2, b"x"), request_frames(3, b"y")])
    client.send_batch([request_frames(1, b"first"),
                       [batch.route_frame(2), nested],
                       [pack_route(Cmd.HELLO, 0, 0, 0, 4), b"", hello],
                       request_frames(5, b"last")])
    pump(router, lambda: (agent.read(), len(agent.inbox) == 2)[1])
    serve(agent, batched=False)
    pump(router, lambda: (client.read(), len(replies_of(client)) == 2)[1])
    assert replies_of(client) == {1: b"first", 5: b"last"}
    errors = [m for m in client.inbox if m[0][1] == Cmd.ERROR]
    assert [error_code(e) for e in errors] == [ErrorCode.MALFORMED] * 2
    assert router.stats.malformed == 2


@pytest.mark.parametrize("router", [4], indirect=True)
def test_requests_batched_to_a_full_instance_are_answered_overloaded(router, ctx):
    """The agent stops reading: once its queue (hwm 4 at the router, 1 at the agent) and the
    connection's buffers are full, every request the router cannot hand it is answered
    OVERLOADED; nothing vanishes."""
    agent = Peer(ctx, router, batches=True, rcvhwm=1)
    register(agent, "stuck", capacity=100_000)
    client = Peer(ctx, router, batches=True)
    total, payload = 0, b"z" * 8000
    for b in range(150):
        client.send_batch([request_frames(b * 32 + i + 1, payload) for i in range(32)])
        total += 32
    pump(router, lambda: router.stats.requests == total, timeout=30)
    overloaded = pump(router, lambda: (client.read(), sum(
        m[0][1] == Cmd.ERROR for m in client.inbox))[1] >= 1)
    full = router.stats.drops["instance_queue_full"]
    pump(router, lambda: (client.read(), sum(m[0][1] == Cmd.ERROR for m in client.inbox)
                          + router.stats.drops["error_unroutable"] >= full)[1])
    errors = [m for m in client.inbox if m[0][1] == Cmd.ERROR]
    assert overloaded
    assert full > 0
    assert {error_code(e) for e in errors} == {ErrorCode.OVERLOADED}
    assert len(errors) + router.stats.drops["error_unroutable"] == full
    in_flight = len(next(iter(router.table.instances.values())).inflight)
    assert in_flight + full == total  # each request: handed to the agent, or refused


def test_requests_for_a_vanished_instance_go_to_another(router, ctx):
    """An instance whose connection is gone (the router has not yet missed its heartbeats):
    what the router could not hand it was never delivered, so it goes to the other instance,
    idempotent or not."""
    gone = Peer(ctx, router, batches=True)
    register(gone, "gone")
    alive = Peer(ctx, router, batches=True)
    register(alive, "alive")
    gone_rid = next(rid for rid, p in router.peers.items()
                    if p.instance is not None and p.instance.name.endswith(b"/gone"))
    gone.sock.close(linger=0)

    def pipe_closed() -> bool:
        try:
            router.sock.send_multipart([gone_rid, pack_route(Cmd.HEARTBEAT)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return True  # EHOSTUNREACH: libzmq dropped the connection
        return False

    pump(router, pipe_closed)
    client = Peer(ctx, router, batches=True)
    client.send_batch([request_frames(i, b"r%d" % i) for i in range(1, 21)])
    pump(router, lambda: (alive.read(), sum(m[0][1] == Cmd.REQUEST for m in alive.inbox) == 20)[1])
    serve(alive, batched=True)
    pump(router, lambda: (client.read(), len(replies_of(client)) == 20)[1])
    assert replies_of(client) == {i: b"r%d" % i for i in range(1, 21)}
    assert not [m for m in client.inbox if m[0][1] == Cmd.ERROR]
    assert gone_rid not in router.peers


def test_what_waits_for_a_peer_that_leaves_in_the_same_burst_is_settled_not_sent(router, ctx):
    """An agent that asks its own service for work and says goodbye in one batch: the request
    was queued for it, then it left, so it is never sent; it was in flight, so it is answered
    UNAVAILABLE like any request of an instance that went away."""
    agent = Peer(ctx, router, batches=True)
    register(agent, "leaving")
    agent.send_batch([request_frames(1, b"for me"), [pack_route(Cmd.DISCONNECT), b""]])
    err = agent.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert error_code(err) == ErrorCode.UNAVAILABLE
    assert router.stats.drops["instance_died"] == 1
    assert not router.peers  # gone
    assert not router.outbox
    assert not [m for m in agent.inbox if m[0][1] == Cmd.REQUEST]  # never handed the request
