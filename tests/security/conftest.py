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
from tests.security.sealed_mesh import (  # noqa: F401 (fixtures)
    sealed_mesh,
    secure_router_thread,
    tapped_router,
)

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


# ---- pub/sub end to end: a tapped proxy, the registry and the topic key service ----------

TOPIC_READERS = ("alice", "bob")


def topic_policy() -> dict[str, Any]:
    """The default roles, plus: ``pub`` publishes on ``news.>``, ``alice``/``bob`` read it,
    ``eve`` reads only ``other.>``; everyone may ask the system services."""
    import copy

    from security.home import DEFAULT_POLICY

    doc = copy.deepcopy(DEFAULT_POLICY)
    doc["roles"].update({
        "caller": {"allow": [{"actions": ["request"], "names": ["agp/**"]},
                             {"actions": ["subscribe"], "topics": ["agp.system.>"]}]},
        "newsdesk": {"allow": [{"actions": ["publish"], "topics": ["news.>"]}]},
        "reader": {"allow": [{"actions": ["subscribe"], "topics": ["news.>"]}]},
        "outsider": {"allow": [{"actions": ["subscribe"], "topics": ["other.>"]}]},
    })
    doc["bindings"] = [
        {"subject": "pub", "roles": ["caller", "newsdesk"]},
        *({"subject": r, "roles": ["caller", "reader"]} for r in TOPIC_READERS),
        {"subject": "eve", "roles": ["caller", "outsider"]},
    ]
    return doc


class TopicMesh:
    """What the ``topic_mesh`` fixture gives a test."""

    def __init__(self, router: Any, captured: list[bytes], mode: dict[str, bool],
                 home: Any) -> None:
        self.router, self.captured, self.mode, self.home = router, captured, mode, home
        self.endpoint: str = router.endpoint
        self.clients: list[Any] = []

    def connect(self, identity: str, *, e2e: bool = True) -> Any:
        from mesh import Mesh

        m = Mesh.connect(self.endpoint, identity=identity, e2e=e2e)
        self.clients.append(m)
        return m

    def edit_policy(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite the policy file in one atomic step (the router and key service reload)."""
        import json
        import os

        doc = json.loads(self.home.policy.read_text())
        edit(doc)
        tmp = self.home.policy.with_suffix(".edit")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.home.policy)


@pytest.fixture
def topic_mesh(mesh_home: Any, spawn: Any, enroll: Any,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[TopicMesh]:
    """A secure router in this process whose XPUB sends go through a tap (capture, and on
    demand tamper with or replay sealed PUBLISH frames), with the registry and the topic key
    service as real processes, and identities pub, alice, bob, eve (see topic_policy)."""
    import json

    import router.proxy as proxy_mod
    from agents.procs import agent_process
    from mesh import Mesh
    from security.home import enroll_identity
    from security.key_service import KEY_SERVICE
    from tests.helpers import wait_for

    captured: list[bytes] = []
    mode = {"tamper": False, "replay": False}
    real_send = proxy_mod.send_frames

    def tap(sock: Any, frames: list[Any]) -> None:
        frames = [bytes(f) for f in frames]
        if len(captured) < 100_000:
            captured.append(b"".join(frames))
        sealed = len(frames) == 4 and frames[1][1] == 7 and frames[1][2] & 2
        if sealed and mode["tamper"]:
            frames[3] = frames[3][:-1] + bytes([frames[3][-1] ^ 1])
        real_send(sock, frames)
        if sealed and mode["replay"]:
            real_send(sock, frames)

    monkeypatch.setattr(proxy_mod, "send_frames", tap)
    mesh_home.policy.write_text(json.dumps(topic_policy()))
    for name in ("pub", "eve", *TOPIC_READERS):
        enroll_identity(mesh_home, name, roles=())
    enroll("registry", "agp/system")
    enroll("keys", "agp/system")
    with secure_router_thread() as r:
        tm = TopicMesh(r, captured, mode, mesh_home)
        try:
            spawn(agent_process("discovery.service", r.endpoint, name="registry",
                                extra=["--identity", "registry"]))
            spawn(agent_process("security.key_service", r.endpoint, name="keys",
                                extra=["--identity", "keys"]))
            with Mesh.connect(r.endpoint) as admin:
                wait_for(lambda: admin.request("agp/system/registry", "lookup",
                                               {"name": KEY_SERVICE}), timeout=DEADLINE,
                         message="the key service registered")
            yield tm
        finally:
            for m in tm.clients:
                m.close()
