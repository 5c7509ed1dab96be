"""The router under faults, on the wire: a caller that leaves with calls queued, a refused
READY, fire-and-forgets over least-outstanding. Raw DEALER peers and a real router pumped in
this thread (helpers: tests/core/test_batch_router.py), so every step is deterministic."""

from __future__ import annotations

from mesh.errors import ErrorCode
from mesh.wire import PROTOCOL_VERSION, ROUTE, Cmd, Flag, pack_route
from proto import agp_pb2
from tests.core import test_batch_router as wire
from tests.core.test_batch_router import Peer, error_code, pump

router, ctx = wire.router, wire.ctx  # its fixtures: a router pumped here, a zmq context


def _register(agent: Peer, service: bytes, instance: str, *, capacity: int = 1,
              policy: int = 0) -> list[bytes]:
    ready = agp_pb2.Ready(service=service.decode(), instance=instance, capacity=capacity,
                          policy=policy)
    agent.send([pack_route(Cmd.READY, 0, 0, 0, 2), b"", ready.SerializeToString()])
    return agent.expect(lambda m: m[0][1] in (Cmd.READY, Cmd.ERROR))


def _call(ident: int, dest: bytes, cmd: int = Cmd.REQUEST) -> list[bytes]:
    header = agp_pb2.Envelope(action="echo").SerializeToString()
    return [pack_route(cmd, Flag.RAW, 0, 60_000, ident), dest, header, b"x"]


def _ident(msg: list[bytes]) -> int:
    return ROUTE.unpack(msg[0])[5]


def _reply(agent: Peer, request: list[bytes]) -> None:
    agent.send([pack_route(Cmd.REPLY, Flag.RAW, 0, 0, _ident(request)), request[1], b"", b"ok"])


def test_a_queued_call_whose_caller_left_is_never_forwarded(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"r/svc", "one")  # room for one call
    keeper = Peer(ctx, router, batches=False)
    keeper.send(_call(1, b"r/svc"))
    first = agent.expect(lambda m: m[0][1] == Cmd.REQUEST)
    leaver = Peer(ctx, router, batches=False)
    leaver.send(_call(2, b"r/svc"))
    leaver.send(_call(3, b"r/svc", cmd=Cmd.STREAM_OPEN))
    svc = router.table.services[b"r/svc"]
    pump(router, lambda: len(svc.queue) == 2)
    leaver.send([pack_route(Cmd.DISCONNECT, 0, 0, 0, 0), b""])
    pump(router, lambda: len(router.peers) == 2)  # the leaver said goodbye
    _reply(agent, first)  # a slot frees: what waited behind call 1 is looked at
    assert _ident(keeper.expect(lambda m: m[0][1] == Cmd.REPLY)) == 1
    keeper.send(_call(4, b"r/svc"))
    got = agent.expect(lambda m: m[0][1] in (Cmd.REQUEST, Cmd.STREAM_OPEN))
    assert _ident(got) == 4  # calls 2 and 3 were not worked on for no one
    inst = router.table.instances[b"r/svc/one"]
    assert list(inst.inflight) == [(got[1], 4)]
    assert not router.streams
    assert router.stats.drops["caller_gone"] == 2


def test_a_refused_ready_leaves_the_instance_of_that_name_alone(router, ctx) -> None:
    owner = Peer(ctx, router, batches=False)
    _register(owner, b"r/b", "one")
    other = Peer(ctx, router, batches=False)
    _register(other, b"r/a", "one")
    client = Peer(ctx, router, batches=False)
    client.send(_call(5, b"r/b"))
    request = owner.expect(lambda m: m[0][1] == Cmd.REQUEST)
    refused = _register(other, b"r/b", "one")  # a second instance on the same connection
    assert error_code(refused) == ErrorCode.MALFORMED
    inst = router.table.instances.get(b"r/b/one")
    assert inst is not None
    assert (request[1], 5) in inst.inflight  # still its owner's, the call still on it
    _reply(owner, request)
    answer = client.expect(lambda m: _ident(m) == 5)
    assert answer[0][1] == Cmd.REPLY  # not UNAVAILABLE: its instance was never taken away
    assert router.table.instances[b"r/a/one"].peer.instance is not None  # nor the other's


def test_least_outstanding_spreads_fire_and_forgets(router, ctx) -> None:
    agents = [Peer(ctx, router, batches=False) for _ in range(2)]
    for n, agent in enumerate(agents):
        _register(agent, b"r/notify", f"i{n}", capacity=10, policy=2)  # LEAST_OUTSTANDING
    client = Peer(ctx, router, batches=False)
    for ident in range(1, 7):
        client.send(_call(ident, b"r/notify", cmd=Cmd.SEND))
    pump(router, lambda: router.stats.sends == 6)
    for agent in agents:  # none in flight anywhere: each takes its turn
        for _ in range(3):
            agent.expect(lambda m: m[0][1] == Cmd.SEND)


def test_a_message_of_another_protocol_version_is_answered_and_counted(router, ctx) -> None:
    client = Peer(ctx, router, batches=False)
    frames = _call(7, b"r/none")
    frames[0] = bytes([PROTOCOL_VERSION + 1]) + frames[0][1:]
    client.send(frames)
    answer = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert error_code(answer) == ErrorCode.VERSION_MISMATCH
    assert router.stats.drops["version_mismatch"] == 1


def test_what_follows_a_goodbye_inside_a_batch_is_counted(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    _register(agent, b"r/svc", "one", capacity=10)
    client = Peer(ctx, router, batches=True)
    client.send_batch([_call(1, b"r/svc"),
                       [pack_route(Cmd.DISCONNECT, 0, 0, 0, 0), b""],
                       _call(2, b"r/svc"), _call(3, b"r/svc")])
    assert _ident(agent.expect(lambda m: m[0][1] == Cmd.REQUEST)) == 1
    pump(router, lambda: router.stats.drops["after_disconnect"] == 2)
    assert len(router.peers) == 1  # the agent only: the client said goodbye
