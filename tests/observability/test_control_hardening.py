"""The control plane's HTTP server against hostile or broken clients, over real sockets:
silent and trickling clients are cut off, a stalled event-stream reader loses its stream
(and its slot), event streams are bounded, HEAD answers headers only; and a drain through
the control plane embedded in a real router process stops new work reaching the instance."""

from __future__ import annotations

import json
import select
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agents.procs import ManagedProcess, router_process
from mesh.errors import Draining
from router.control import ControlServer
from router.control_status import ControlCollector, StatusCollector
from security.home import Home, enroll_identity
from tests.helpers import wait_for
from tests.observability.obs_helpers import http, mesh_token

BIG = "x" * 4000  # a large snapshot (~200 kB an event) fills a stalled reader's buffers fast


def _big_fetch() -> Any:
    services = [{"service": f"test/big/s{i}", "note": BIG, "instances": []} for i in range(50)]
    return {}, services, None


@pytest.fixture
def serve() -> Iterator[Callable[..., ControlServer]]:
    """A ControlServer on an ephemeral port, stopped (and its poller with it) at the end."""
    started: list[ControlServer] = []

    def start(fetch: Any = None, interval: float = 0.1, **kw: Any) -> ControlServer:
        server = ControlServer(StatusCollector(fetch, interval=interval).start(), port=0, **kw)
        started.append(server.start())
        return server

    yield start
    for s in started:
        s.stop()


def _connect(server: ControlServer, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect: the window the server may fill
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", server.port))
    return s


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """True once the server has closed the connection (EOF or reset) within ``within`` s;
    whatever it sent first (an error page, events) is read and discarded."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _read_all(s: socket.socket, within: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (and whether it did) within ``within`` s."""
    data, deadline = b"", time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _open_stream(server: ControlServer) -> tuple[socket.socket, bytes]:
    """A GET /api/events; returns the socket and what came: a 200's head and first event,
    or a refusal's whole answer (read until the server closes)."""
    s = _connect(server)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: t\r\n\r\n")
    data, deadline = b"", time.monotonic() + 10
    while not (data.startswith(b"HTTP/1.0 200") and b"\r\n\r\ndata: " in data):
        left = deadline - time.monotonic()
        assert left > 0, f"no event or answer within 10 s: {data[:200]!r}"
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:  # a refusal ends here
            break
        data += chunk
    return s, data


# ---------------------------------------------------------------------- slow clients
def test_silent_and_half_request_clients_are_disconnected(
        serve: Callable[..., ControlServer]) -> None:
    server = serve(request_timeout=0.5)
    silent = _connect(server)
    half = _connect(server)
    try:
        half.sendall(b"GET /api/sta")
        began = time.monotonic()
        assert _closed_by_peer(silent, within=10), "a silent client kept its connection"
        assert _closed_by_peer(half, within=10), "half a request line kept its connection"
        assert time.monotonic() - began < 5
        assert server.drops["request_timeout"] >= 2
        assert http("GET", server.url + "/healthz")[0] == 200  # the server still serves
    finally:
        silent.close()
        half.close()


def test_a_trickling_client_is_cut_at_the_request_deadline(
        serve: Callable[..., ControlServer]) -> None:
    """One byte every 0.1 s never trips a per-read timeout: the whole request has a deadline."""
    server = serve(request_timeout=1.0)
    s = _connect(server)
    try:
        request = b"GET /api/status HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 400
        began, closed = time.monotonic(), False
        for byte in request:  # bounded: 400+ bytes at most, about 40 s; cut long before
            readable, _, _ = select.select([s], [], [], 0.1)
            if readable:
                closed = _closed_by_peer(s, within=1)
                break
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "a trickling client kept its connection"
        assert time.monotonic() - began < 8
        assert server.drops["request_timeout"] == 1
    finally:
        s.close()


def test_a_body_that_never_comes_is_cut(serve: Callable[..., ControlServer]) -> None:
    server = serve(request_timeout=0.5)
    s = _connect(server)
    try:
        s.sendall(b"POST /api/admin/drain HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"in")
        assert _closed_by_peer(s, within=10), "a missing body kept the connection"
    finally:
        s.close()


# ---------------------------------------------------------------------- event streams
def test_a_stalled_event_reader_loses_its_stream_and_its_slot(
        serve: Callable[..., ControlServer]) -> None:
    server = serve(_big_fetch, interval=0.05, max_streams=1, write_timeout=0.5)
    stalled = _connect(server, rcvbuf=4096)
    try:
        stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: t\r\n\r\n")  # then never reads
        wait_for(lambda: server.sse_clients == 1, 10, message="stream open")
        code, body = http("GET", server.url + "/api/events")
        assert code == 503
        assert "event streams" in body["error"]
        # its writes stall once the buffers are full; the stream must end within the timeout
        wait_for(lambda: server.sse_clients == 0, 30, interval=0.05,
                 message="the stalled stream ended")
        assert server.drops["stream_stalled"] == 1
        s, head = _open_stream(server)  # the slot is free again
        s.close()
        assert head.startswith(b"HTTP/1.0 200"), head[:100]
    finally:
        stalled.close()


def test_event_streams_are_bounded(serve: Callable[..., ControlServer]) -> None:
    server = serve(max_streams=2)
    first, head1 = _open_stream(server)
    second, head2 = _open_stream(server)
    try:
        assert head1.startswith(b"HTTP/1.0 200")
        assert head2.startswith(b"HTTP/1.0 200")
        assert server.sse_clients == 2
        refused, head3 = _open_stream(server)
        refused.close()
        assert head3.startswith(b"HTTP/1.0 503"), head3[:100]
        assert b"Retry-After:" in head3
        error = json.loads(head3.split(b"\r\n\r\n", 1)[1])["error"]
        assert "too many event streams" in error
        assert "2" in error  # says what the limit is
        assert server.drops["stream_limit"] == 1
        registry = CollectorRegistry()  # and Prometheus sees it, by reason
        registry.register(ControlCollector(server.status, server))
        assert registry.get_sample_value("agp_control_http_dropped_total",
                                         {"reason": "stream_limit"}) == 1
        first.close()  # noticed at its next event (every 0.1 s here)
        wait_for(lambda: server.sse_clients == 1, 10, message="closed stream released")
        again, head4 = _open_stream(server)
        again.close()
        assert head4.startswith(b"HTTP/1.0 200")
    finally:
        first.close()
        second.close()


def test_head_on_events_answers_headers_and_returns(serve: Callable[..., ControlServer]) -> None:
    server = serve()
    s = _connect(server)
    try:
        s.sendall(b"HEAD /api/events HTTP/1.1\r\nHost: t\r\n\r\n")
        data, closed = _read_all(s, within=10)
    finally:
        s.close()
    assert closed, f"HEAD /api/events did not end: {data[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"Content-Type: text/event-stream" in head
    assert body == b""
    assert server.sse_clients == 0
    req = urllib.request.Request(server.url + "/api/status", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.read() == b""


# ---------------------------------------------------------------------- embedded drain
@pytest.fixture
def router(spawn: Callable[..., ManagedProcess], mesh_home: Home) -> ManagedProcess:
    """This module's router runs the control plane in its own process (``--control-port``);
    ``start_echo`` and friends pick it up in place of the plain one."""
    return spawn(router_process(extra=["--auth-port", "0", "--control-port", "0"]))


def test_drain_through_the_embedded_control_plane(
        router: ManagedProcess, mesh_home: Home,
        start_echo: Callable[..., ManagedProcess]) -> None:
    from mesh import Mesh

    start_echo(namespace="test/drn", instance="one")
    start_echo(namespace="test/drn", instance="two")
    ep, url = router.ready_info["router"], router.ready_info["control"]
    admin = mesh_token(ep, "tester")
    enroll_identity(mesh_home, "plain-client", roles=("client",))
    drain = url + "/api/admin/drain"
    with Mesh.connect(ep, identity="tester") as m:
        def who() -> str:
            return str(m.request("test/drn/echo", "whoami", timeout=5)["instance"])

        seen: set[str] = set()
        wait_for(lambda: seen.add(who()) or len(seen) == 2, 20,
                 message="both instances serve before the drain")
        assert http("POST", drain, {"instance": "test/drn/echo/one"})[0] == 401
        assert http("POST", drain, {"instance": "test/drn/echo/one"},
                    token=mesh_token(ep, "plain-client"))[0] == 403
        code, body = http("POST", drain, {"instance": "test/drn/echo/nope"}, token=admin)
        assert code == 404, body
        code, body = http("POST", drain, {"instance": "test/drn/echo/one"}, token=admin)
        assert code == 200, body
        assert body["instance"] == "test/drn/echo/one"
        assert body["by"] == "tester"
        assert body["result"]["accepting"] is False
        after = [who() for _ in range(20)]
        assert set(after) == {"test/drn/echo/two"}, after
        with pytest.raises(Draining):
            m.request("test/drn/echo/one", "whoami", timeout=5)
        assert m.request("agp/router", "stats")["drops"]["instance_draining"] == 1
    def accepting() -> dict[str, bool]:
        status = http("GET", url + "/api/status")[1]
        svc = [s for s in status["services"] if s["service"] == "test/drn/echo"]
        return {i["name"]: i["accepting"] for s in svc for i in s["instances"]}

    want = {"test/drn/echo/one": False, "test/drn/echo/two": True}
    wait_for(lambda: accepting() == want, 10, message="the drain shown on /api/status")
