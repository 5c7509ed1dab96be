"""A fire-and-forget an instance refused as not sealed for its key: the router carries the
instance's NOT_A_RECIPIENT back to the sender (nothing else is in flight to tell it), and
still drops, counted, any other answer to nothing in flight; the sender's core hands the
service the router named to whoever holds its keys. Raw DEALER peers speak the wire to a
real router pumped in this thread (helpers: tests/core/test_batch_router.py)."""

from __future__ import annotations

from mesh.errors import ErrorCode
from mesh.wire import ROUTE, Cmd, Flag, error_frames, pack_route
from proto import agp_pb2
from tests.core import test_batch_router as wire
from tests.core.test_batch_router import SERVICE, Peer, error_code, pump, register

router, ctx = wire.router, wire.ctx  # its fixtures: a router pumped here, a zmq context


def _a_send_reaches_the_agent(client: Peer, agent: Peer, ident: int) -> list[bytes]:
    header = agp_pb2.Envelope(action="record").SerializeToString()
    client.send([pack_route(Cmd.SEND, Flag.RAW, 0, 0, ident), SERVICE, header, b"x"])
    return agent.expect(lambda m: m[0][1] == Cmd.SEND and ROUTE.unpack(m[0])[5] == ident)


def test_a_refused_send_is_told_to_its_sender_and_counted(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    register(agent, "one")
    client = Peer(ctx, router, batches=False)
    sent = _a_send_reaches_the_agent(client, agent, 7)
    crid = sent[1]
    agent.send(error_frames(ErrorCode.NOT_A_RECIPIENT, "not sealed for this key", 7, crid))
    told = client.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert ROUTE.unpack(told[0])[5] == 0  # no call id: it can fail none of the sender's calls
    assert error_code(told) == ErrorCode.NOT_A_RECIPIENT
    assert told[1] == SERVICE + b"/one"  # from which instance
    assert router.stats.send_refusals == 1
    assert router.stats.drops["late_reply"] == 0


def test_an_instance_cannot_fail_another_clients_call(router, ctx) -> None:
    """A refusal the router carries has no call id, so an instance guessing another
    client's routing id and call id fails nothing (the call is still served)."""
    honest = Peer(ctx, router, batches=False)
    register(honest, "honest")
    victim = Peer(ctx, router, batches=False)
    header = agp_pb2.Envelope(action="echo").SerializeToString()
    victim.send([pack_route(Cmd.REQUEST, Flag.RAW, 0, 10_000, 5), SERVICE, header, b"q"])
    request = honest.expect(lambda m: m[0][1] == Cmd.REQUEST)
    victim_rid = request[1]  # what a rogue instance would guess
    rogue = Peer(ctx, router, batches=False)
    rogue_ready = agp_pb2.Ready(service="test/other/svc", instance="rogue", capacity=10)
    rogue.send([pack_route(Cmd.READY, 0, 0, 0, 2), b"", rogue_ready.SerializeToString()])
    rogue.expect(lambda m: m[0][1] == Cmd.READY)
    rogue.send(error_frames(ErrorCode.NOT_A_RECIPIENT, "forged", 5, victim_rid))
    told = victim.expect(lambda m: m[0][1] == Cmd.ERROR)
    assert ROUTE.unpack(told[0])[5] == 0  # not call 5
    honest.send([pack_route(Cmd.REPLY, Flag.RAW, 0, 0, 5), victim_rid, b"", b"a"])
    answer = victim.expect(lambda m: m[0][1] == Cmd.REPLY)
    assert ROUTE.unpack(answer[0])[5] == 5
    assert answer[-1] == b"a"


def test_any_other_answer_to_nothing_in_flight_is_dropped_and_counted(router, ctx) -> None:
    agent = Peer(ctx, router, batches=False)
    register(agent, "one")
    client = Peer(ctx, router, batches=False)
    crid = _a_send_reaches_the_agent(client, agent, 8)[1]
    agent.send(error_frames(ErrorCode.INTERNAL, "boom", 8, crid))
    agent.send([pack_route(Cmd.REPLY, Flag.RAW, 0, 0, 8), crid, b"", b"late"])
    pump(router, lambda: router.stats.drops["late_reply"] == 2)
    client.read()
    assert not [m for m in client.inbox if m[0][1] in (Cmd.ERROR, Cmd.REPLY)]
    assert router.stats.send_refusals == 0


def test_the_client_drops_the_keys_of_the_service_the_router_named() -> None:
    """The client reads the refusing instance's service from the address the router stamped
    ("service/instance"), not from what the instance wrote: an instance can make a client
    look up again only its own service's keys. Fed as bytes to a client core (no socket)."""
    from mesh.core import Core
    from mesh.wire import parse_route
    from proto import agp_pb2 as pb

    core = Core("tcp://127.0.0.1:1")
    told: list[str] = []
    core.on_send_refused = told.append
    detail = pb.ErrorDetail(code=int(ErrorCode.NOT_A_RECIPIENT), message="not for this key")
    detail.details["service"] = "other/ns/victim"  # what a lying instance might add
    frames = [pack_route(Cmd.ERROR, 0, int(ErrorCode.NOT_A_RECIPIENT), 0, 0),
              SERVICE + b"/two", detail.SerializeToString()]
    core._on_error(parse_route(frames[0]), frames, 0)
    assert told == [SERVICE.decode()]
    assert core.counters["sends_refused"] == 1
    assert "unclaimed_error_not_a_recipient" not in core.counters
    other = error_frames(ErrorCode.INTERNAL, "boom", 42, SERVICE + b"/two")
    core._on_error(parse_route(other[0]), other, 42)  # anything else: unclaimed, by code
    assert told == [SERVICE.decode()]
    assert core.counters["unclaimed_error_internal"] == 1
