"""The router's housekeeping and deaths, on the wire: raw DEALER peers and a real router
pumped in this thread (helpers: tests/core/test_batch_router.py); housekeeping is called
with the time it should see, so nothing waits on a clock."""

from __future__ import annotations

import time

import zmq

from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd, Flag, pack_route
from proto import agp_pb2
from tests.core import test_batch_router as wire
from tests.core.test_batch_router import Peer, error_code, pump

router, ctx = wire.router, wire.ctx  # its fixtures: a router pumped here, a zmq context


def _register(agent: Peer, service: bytes, instance: str, capacity: int = 1) -> None:
    ready = agp_pb2.Ready(service=service.decode(), instance=instance, capacity=capacity)
    agent.send([pack_route(Cmd.READY, 0, 0, 0, 2), b"", ready.SerializeToString()])
    agent.expect(lambda m: m[0][1] == Cmd.READY)


def _call(ident: int, dest: bytes, timeout_ms: int = 10_000, flags: int = Flag.RAW,
          cmd: int = Cmd.REQUEST) -> list[bytes]:
    header = agp_pb2.Envelope(action="echo").SerializeToString()
    return [pack_route(cmd, flags, 0, timeout_ms, ident), dest, header, b"x"]


def _ident(msg: list[bytes]) -> int:
    return ROUTE.unpack(msg[0])[5]


def test_a_queued_call_past_its_deadline_is_answered_wherever_it_waits(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"q/svc", "one")  # room for one call
    client = Peer(ctx, router, batches=False)
    client.send(_call(1, b"q/svc"))
    agent.expect(lambda m: m[0][1] == Cmd.REQUEST)
    client.send(_call(2, b"q/svc", timeout_ms=60_000))  # queued first, a long deadline
    client.send(_call(3, b"q/svc", timeout_ms=200))  # queued behind it, a short one
    pump(router, lambda: len(router.table.services[b"q/svc"].queue) == 2)
    router._housekeeping(router.now + 1.0)  # a second later: only call 3's deadline passed
    err = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert (_ident(err), error_code(err)) == (3, ErrorCode.DEADLINE_EXCEEDED)
    assert [q.ident for q in router.table.services[b"q/svc"].queue] == [2]


def test_a_send_to_a_draining_instance_is_refused_not_lost(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"q/svc", "one", capacity=10)
    agent.send([pack_route(Cmd.DISCONNECT, 0, int(ErrorCode.DRAINING), 0, 0), b""])
    pump(router, lambda: not router.table.instances[b"q/svc/one"].accepting)
    client = Peer(ctx, router, batches=False)
    client.send(_call(4, b"q/svc/one", cmd=Cmd.SEND))
    err = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert (_ident(err), error_code(err)) == (4, ErrorCode.OVERLOADED)
    assert router.stats.drops["send_no_instance"] == 1


def test_a_service_gone_by_housekeeping_leaves_no_alias_behind(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"a/x", "one")
    client = Peer(ctx, router, batches=False)
    client.send(_call(1, b"a/x"))
    agent.expect(lambda m: m[0][1] == Cmd.REQUEST)
    client.send(_call(2, b"a/x", timeout_ms=200))  # queued: the service outlives its agent
    pump(router, lambda: len(router.table.services[b"a/x"].queue) == 1)
    agent.send([pack_route(Cmd.DISCONNECT, 0, 0, 0, 0), b""])
    pump(router, lambda: not router.table.services[b"a/x"].instances)
    router._housekeeping(router.now + 1.0)  # call 2 expires; a/x is gone
    other = Peer(ctx, router, batches=False)
    _register(other, b"b/x", "one")
    client.send(_call(5, b"x"))  # the short name: only b/x has it now
    request = other.expect(lambda m: m[0][1] == Cmd.REQUEST)
    assert _ident(request) == 5


def test_an_instance_dying_while_a_client_of_it_is_gone_still_settles_every_call(
        router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"s/q", "one", capacity=10)
    gone = Peer(ctx, router, batches=False)  # will vanish with a call and a stream open
    other = Peer(ctx, router, batches=True)
    gone.send(_call(1, b"s/q"))
    gone.send(_call(2, b"s/q", cmd=Cmd.STREAM_OPEN))
    other.send(_call(7, b"s/q"))
    inst = router.table.instances[b"s/q/one"]
    pump(router, lambda: len(inst.inflight) == 3)
    gone.sock.close(linger=0)
    wire.OPEN.remove(gone.sock)
    deadline = time.monotonic() + 5
    while True:  # until the router's socket knows that peer is gone (sends to it fail)
        try:
            router.sock.send_multipart([gone_rid(router, other), b"probe"], zmq.NOBLOCK)
        except zmq.ZMQError:
            break
        assert time.monotonic() < deadline, "the closed peer never went away"
        time.sleep(0.01)
    agent.send([pack_route(Cmd.DISCONNECT, 0, 0, 0, 0), b""])
    err = other.expect(lambda m: m[0][1] == Cmd.ERROR)  # its call was settled, not lost
    assert (_ident(err), error_code(err)) == (7, ErrorCode.UNAVAILABLE)
    assert not inst.inflight
    assert "unhandled" not in router.stats.malformed_by


def gone_rid(router, other: Peer) -> bytes:
    """The routing id of the peer that is neither the agent nor ``other``."""
    rids = [rid for rid, p in router.peers.items()
            if p.instance is None and p.batches is False]
    return rids[0]


def test_a_publish_claiming_more_messages_than_any_batch_is_refused(router, ctx) -> None:
    from mesh.subscription import MAX_BATCH

    pub = Peer(ctx, router, batches=False)
    pub.send([pack_route(Cmd.PUBLISH, 0, 0, MAX_BATCH + 1, 0), b"t.x", b"", b"\x90"])
    pump(router, lambda: router.stats.malformed_by.get("publish_count") == 1)
    assert router.proxy._seq.get(b"t.x", 0) == 0  # its numbers did not move


def test_old_traces_are_forgotten(router) -> None:
    router.traced[(b"c", 1)] = time.time_ns() - 3600 * 10**9  # an hour ago, never answered
    router.traced[(b"c", 2)] = time.time_ns()
    router._forget_old_traces()
    assert list(router.traced) == [(b"c", 2)]


def test_an_idempotent_call_to_one_instance_is_not_sent_to_another_when_it_dies(
        router, ctx) -> None:
    one = Peer(ctx, router, batches=False)
    _register(one, b"s/q", "one")
    two = Peer(ctx, router, batches=False)
    _register(two, b"s/q", "two")
    client = Peer(ctx, router, batches=False)
    client.send(_call(8, b"s/q/one", flags=Flag.RAW | Flag.IDEMPOTENT))  # that instance's
    client.send(_call(9, b"s/q", flags=Flag.RAW | Flag.IDEMPOTENT))  # the service's
    pump(router, lambda: sum(len(i.inflight) for i in router.table.services[b"s/q"].instances)
         == 2)
    on_one = sorted((_ident(m)) for m in [*_take_requests(one)])
    one.send([pack_route(Cmd.DISCONNECT, 0, 0, 0, 0), b""])
    err = client.expect(lambda m: m[0][1] == Cmd.ERROR and _ident(m) == 8)
    assert error_code(err) == ErrorCode.UNAVAILABLE
    if 9 in on_one:  # the service's call, balanced onto the dead one: served by the other
        assert _ident(two.expect(lambda m: m[0][1] == Cmd.REQUEST and _ident(m) == 9)) == 9
    two.read()
    assert 8 not in [_ident(m) for m in two.inbox if m[0][1] == Cmd.REQUEST]


def _take_requests(agent: Peer) -> list[list[bytes]]:
    agent.read()
    got = [m for m in agent.inbox if m[0][1] == Cmd.REQUEST]
    for m in got:
        agent.inbox.remove(m)
    return got
