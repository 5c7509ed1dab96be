"""Direct streams between real processes: the open goes through the router, the chunks go
peer to peer over CURVE to the agent's own socket (mesh/direct.py). The router sees no chunk;
a key that is not the connection's cannot open one; a stolen ticket does not get in; a
dead agent still ends the stream with an error through the router."""

from __future__ import annotations

import asyncio
import os
import signal

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from mesh import AsyncMesh, Forbidden, Mesh, Unavailable
from mesh.errors import ErrorCode, Malformed
from mesh.stream import parse_answer
from mesh.wire import Cmd, Flag, pack_route, parse_error, parse_route
from proto import agp_pb2
from security.home import client_security
from tests.helpers import wait_for

SVC = "test/ns/echo"
CHUNK = bytes(256 * 1024)


def _router_chunks(m: Mesh) -> int:
    return m.request("agp/router", "stats")["stream_chunks"]


def test_chunks_go_peer_to_peer_and_the_router_sees_none(router, start_echo) -> None:
    start_echo()
    with Mesh.connect(router.ready_info["router"]) as m:
        before = _router_chunks(m)
        with m.stream(SVC, "ingest", {"note": "params still go via the router"}) as s:
            for _ in range(100):  # many windows: credit comes back on the direct path
                s.write(CHUNK, raw=True)
        assert s.result["direct"] is True
        assert (s.result["chunks"], s.result["bytes"]) == (100, 100 * len(CHUNK))
        assert _router_chunks(m) == before
        with m.stream(SVC, "ingest", direct=False) as s:  # asked not to: via the router
            for _ in range(10):
                s.write(CHUNK, raw=True)
        assert s.result["direct"] is False
        assert _router_chunks(m) == before + 11  # ten chunks and the end


def test_streams_share_one_direct_connection_and_run_concurrently(router, start_echo) -> None:
    start_echo()

    async def main() -> list[dict]:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            async def one(n: int) -> dict:
                async with m.stream(SVC, "ingest") as s:
                    for _ in range(n):
                        await s.write(CHUNK, raw=True)
                return s.result

            results = await asyncio.gather(*(one(n) for n in (5, 40, 17)))
            assert len(m.core.direct_links().socks) == 1
            return results

    results = asyncio.run(main())
    assert [r["chunks"] for r in results] == [5, 40, 17]
    assert all(r["direct"] for r in results)


def test_a_direct_open_naming_another_key_is_forbidden(router, start_echo, enroll) -> None:
    start_echo()
    enroll("someone-else", "test/other")
    other = client_security("someone-else")

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            waiter = asyncio.get_running_loop().create_future()
            header = agp_pb2.Envelope(action="ingest", sender_key=other.public)
            m.core.start_request(Cmd.STREAM_OPEN, SVC.encode(), header.SerializeToString(),
                                 [b"\xc0"], waiter, flags=Flag.DIRECT, timeout=5)
            with pytest.raises(Forbidden, match="not the connection's"):
                await waiter

    asyncio.run(main())


def test_a_stolen_ticket_does_not_get_in(router, start_echo, enroll) -> None:
    start_echo()
    enroll("thief", "test/thief")
    thief = client_security("thief")

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            async with m.stream(SVC, "ingest") as s:
                await s.write(CHUNK, raw=True)
                endpoint = next(iter(m.core.direct_links().socks))[0]
                agent_key = next(iter(m.core.direct_links().socks))[1]
                ctx = zmq.Context()
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                              | zmq.EVENT_HANDSHAKE_SUCCEEDED)
                mon.setsockopt(zmq.LINGER, 0)
                try:
                    sock.curve_publickey, sock.curve_secretkey = thief.public, thief.secret
                    sock.curve_serverkey = agent_key
                    sock.connect(endpoint)
                    sock.send_multipart([pack_route(Cmd.STREAM_OPEN, 0, 0, 0, s.ident),
                                         s._ticket])
                    # off the event loop: the mesh keeps running while this waits
                    assert await asyncio.to_thread(mon.poll, 5000), \
                        "no handshake outcome within 5 s"
                    event = recv_monitor_message(mon)["event"]
                finally:
                    sock.disable_monitor()
                    mon.close(0)
                    sock.close(0)
                    ctx.term()
                assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH  # ZAP: this key holds no offer
                await s.write(CHUNK, raw=True)  # the owner's stream goes on
            assert s.result["chunks"] == 2
            assert s.result["direct"]

    asyncio.run(main())


def test_a_dead_agent_ends_a_direct_stream_with_an_error(router, start_echo) -> None:
    agent = start_echo()

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            s = await m.stream(SVC, "ingest").open()
            await s.write(CHUNK, raw=True)
            assert s.direct
            os.kill(agent.pid, signal.SIGKILL)

            async def write_until_refused() -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while loop.time() < deadline:
                    await asyncio.wait_for(s.write(CHUNK, raw=True), 10)
                    await asyncio.sleep(0.01)  # paces the bounded loop; not a sync point

            with pytest.raises(Unavailable):  # the router noticed, and said so
                await write_until_refused()
            s.abort()

    asyncio.run(main())
    wait_for(lambda: agent.proc.poll() is not None, message="agent exited")


def test_an_unreachable_direct_path_falls_back_to_the_router(router, spawn, enroll) -> None:
    from agents.procs import agent_process

    identity = enroll("echo-unreachable", "test/ns")
    spawn(agent_process("tests.core.unreachable_direct_echo", router.ready_info["router"],
                        name="unreachable", extra=["--namespace", "test/ns", "--instance",
                                                   "unreachable", "--identity", identity]))
    with Mesh.connect(router.ready_info["router"]) as m:
        with m.stream(SVC, "ingest") as s:  # waits BIND_TIMEOUT for the direct path
            for _ in range(20):
                s.write(CHUNK, raw=True)
        assert s.result["chunks"] == 20
        assert s.result["direct"] is False  # the chunks went through the router


@pytest.mark.parametrize(("frame", "why"), [
    (b"\xc1", "undecodable"),
    (b"\x93\x01\x02\x03", "not a map of bytes"),
    (msgpack.packb({"t": "text, not bytes"}), "not a map of bytes"),
    (b"\xc4" + b"x" * 5000, "too large"),
])
def test_a_malformed_stream_answer_is_refused_clearly(frame: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        parse_answer([b"route", b"instance", b"", frame])
    assert parse_answer([b"route", b"instance"]) == {}  # a plain credit carries none


def test_garbage_on_the_direct_socket_is_refused_and_the_stream_goes_on(router,
                                                                       start_echo) -> None:
    start_echo()
    me = client_security("tester")

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            async with m.stream(SVC, "ingest") as s:
                await s.write(CHUNK, raw=True)
                endpoint, agent_key = next(iter(m.core.direct_links().socks))
                ctx = zmq.Context()
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                try:
                    sock.curve_publickey, sock.curve_secretkey = me.public, me.secret
                    sock.curve_serverkey = agent_key  # admitted: this key holds an offer
                    sock.connect(endpoint)
                    sock.send_multipart([b"short"])  # no route frame: dropped, counted
                    sock.send_multipart([pack_route(Cmd.STREAM_DATA, 0, 0, 0, 99),
                                         b"no-such-ticket!!", b"data"])
                    # off the event loop: the mesh keeps running while this waits
                    assert await asyncio.to_thread(sock.poll, 5000), \
                        "no answer to an unknown ticket within 5 s"
                    answer = sock.recv_multipart()
                finally:
                    sock.close(0)
                    ctx.term()
                code, message, _ = parse_error(parse_route(answer[0]), answer)
                assert (code, message) == (ErrorCode.CANCELLED, "no such direct stream")
                await s.write(CHUNK, raw=True)
            assert s.result["chunks"] == 2
            assert s.result["direct"]

    asyncio.run(main())


def test_large_chunks_reach_the_handler_uncopied_and_whole(router, start_echo) -> None:
    """Peer to peer a large raw chunk is handed to ``StreamIn.views()`` as a view of the
    buffer libzmq received it in (no copy); through the router as bytes; the same bytes
    arrive either way (the agent digests what it read)."""
    import hashlib

    start_echo()
    chunks = [os.urandom(200 * 1024) for _ in range(5)] + [b"small"]
    want = hashlib.sha256(b"".join(chunks)).hexdigest()
    with Mesh.connect(router.ready_info["router"]) as m:
        results = []
        for direct in (True, False):
            with m.stream(SVC, "ingest", {"digest": True}, direct=direct) as s:
                for c in chunks:
                    s.write(c, raw=True)
            results.append(s.result)
    peer, relayed = results
    assert peer["direct"] is True
    assert relayed["direct"] is False
    assert peer["sha256"] == relayed["sha256"] == want
    assert peer["kinds"] == ["bytes", "memoryview"]  # the small one is copied, as ever
    assert relayed["kinds"] == ["bytes"]
