"""Fixtures for the security tests: zmq contexts, CURVE socket pairs, monitors, leak guards."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from security import keys

DEADLINE = 15.0  # generous: the machine is shared and slow under load


def wait_until(cond: Callable[[], Any], timeout: float = DEADLINE, step: float = 0.01) -> Any:
    """Poll ``cond`` until truthy or the deadline passes (then fail the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves one of our threads (ZAP, HTTP) running."""
    yield
    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("agp-")]
    try:
        wait_until(lambda: not ours(), timeout=5.0)
    except AssertionError:
        pytest.fail(f"threads leaked: {ours()}")


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def server_keys() -> keys.KeyPair:
    return keys.generate()


class Monitor:
    """Reads a socket's monitor events until one of the wanted ones arrives."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.mon = sock.get_monitor_socket()
        self.seen: list[dict[str, Any]] = []

    def wait_for(self, *events: int, timeout: float = DEADLINE) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mon.poll(50):
                ev = recv_monitor_message(self.mon)
                self.seen.append(ev)
                if ev["event"] in events:
                    return ev
        raise AssertionError(f"no event {events} within {timeout} s; saw {self.seen}")


class Pair:
    """A ROUTER server and a DEALER client over tcp://127.0.0.1, with monitors."""

    def __init__(self, ctx: zmq.Context, setup_server: Callable[[zmq.Socket], None],
                 setup_client: Callable[[zmq.Socket], None]) -> None:
        self.server = ctx.socket(zmq.ROUTER)
        self.server.linger = 0
        setup_server(self.server)
        self.server_mon = Monitor(self.server)
        port = self.server.bind_to_random_port("tcp://127.0.0.1")
        self.client = ctx.socket(zmq.DEALER)
        self.client.linger = 0
        self.client.sndtimeo = int(DEADLINE * 1000)  # never block a test forever
        setup_client(self.client)
        self.client_mon = Monitor(self.client)
        self.client.connect(f"tcp://127.0.0.1:{port}")

    def roundtrip(self, payload: bytes = b"ping") -> list[zmq.Frame]:
        """Send from the client; return the frames the server got (fails on timeout)."""
        self.client.send(payload)
        assert self.server.poll(int(DEADLINE * 1000)), "server got nothing"
        return self.server.recv_multipart(copy=False)

    def try_send(self, payload: bytes) -> None:
        """Queue a message if the client still has a pipe. A refused handshake (ZAP 400)
        makes libzmq drop the pipe and stop reconnecting, after which a send would block."""
        with contextlib.suppress(zmq.Again):
            self.client.send(payload, zmq.NOBLOCK)

    def close(self) -> None:
        for s in (self.server, self.client):
            s.disable_monitor()
        for s in (self.server_mon.mon, self.client_mon.mon, self.server, self.client):
            s.close(linger=0)


@pytest.fixture
def make_pair(zctx: zmq.Context) -> Iterator[Callable[..., Pair]]:
    pairs: list[Pair] = []

    def make(setup_server: Callable[[zmq.Socket], None],
             setup_client: Callable[[zmq.Socket], None]) -> Pair:
        pair = Pair(zctx, setup_server, setup_client)
        pairs.append(pair)
        return pair

    try:
        yield make
    finally:
        for p in pairs:
            p.close()
