"""End-to-end sealing across a real mesh: a tap on the router finds no plaintext, and a
tampered ciphertext is refused by the agent. The router runs in this process so the test
can wrap the function it sends every frame with; the agent and registry are processes."""

from __future__ import annotations

import threading

import pytest

import router.server as router_server
from agents.procs import agent_process
from mesh import Mesh, Unauthenticated
from router.config import RouterConfig
from router.server import Router
from security.server import secure_router
from tests.helpers import wait_for

SECRET = "TOP-SECRET-7f3a"
RAW_SECRET = b"RAW-SECRET-91c2"


@pytest.fixture
def tapped_router(mesh_home, monkeypatch):
    captured: list[list[bytes]] = []
    tamper = {"on": False}
    real_send = router_server.send_frames

    def tap(sock, frames):
        frames = list(frames)
        if len(captured) < 10_000:
            captured.append([bytes(f) for f in frames])
        # a sealed REQUEST (command 4, flag ENCRYPTED) on its way to an agent
        if tamper["on"] and len(frames) > 4 and frames[1][1] == 4 and frames[1][2] & 2:
            last = bytearray(frames[-1])
            last[-1] ^= 0x01
            frames[-1] = bytes(last)
        real_send(sock, frames)

    monkeypatch.setattr(router_server, "send_frames", tap)
    parts = secure_router(auth_port=0)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0"),
               access=parts.access, server_keypair=parts.server_keypair)
    r.start()
    t = threading.Thread(target=r.run, daemon=True)
    t.start()
    try:
        yield r, captured, tamper
    finally:
        r.stop()
        t.join(5)
        parts.stop()


@pytest.fixture
def sealed_mesh(tapped_router, spawn, enroll):
    r, captured, tamper = tapped_router
    enroll("registry", "agp/system")
    spawn(agent_process("discovery.service", r.endpoint, name="registry",
                        extra=["--identity", "registry"]))
    enroll("echo-e2e", "test/e2e")
    spawn(agent_process("agents.echo", r.endpoint, name="echo-e2e",
                        extra=["--namespace", "test/e2e", "--identity", "echo-e2e",
                               "--instance", "one"]))
    with Mesh.connect(r.endpoint, e2e=True) as m:
        wait_for(lambda: m.request("agp/system/registry", "lookup",
                                   {"name": "test/e2e/echo"}, _plain=True),
                 message="agent registered")
        yield m, captured, tamper


def test_the_router_forwards_no_plaintext_payload(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    assert m.request("test/e2e/echo", "echo", {"secret": SECRET}) == {"secret": SECRET}
    assert m.request("test/e2e/echo", "echo", RAW_SECRET, raw=True) == RAW_SECRET
    forwarded = b"".join(b"".join(frames) for frames in captured)
    assert len(captured) >= 4  # both requests and both replies went through the tap
    assert SECRET.encode() not in forwarded
    assert RAW_SECRET not in forwarded


def test_a_tampered_ciphertext_is_refused(sealed_mesh) -> None:
    m, _, tamper = sealed_mesh
    tamper["on"] = True
    try:
        with pytest.raises(Unauthenticated):
            m.request("test/e2e/echo", "echo", {"secret": SECRET}, timeout=10)
    finally:
        tamper["on"] = False
    assert m.request("test/e2e/echo", "echo", "after") == "after"


def test_a_sealed_send_crosses_the_router_as_ciphertext(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    m.send("test/e2e/echo/one", "record", {"secret": SECRET})
    wait_for(lambda: {"secret": SECRET} in m.request("test/e2e/echo/one", "recorded_items"),
             message="the sealed send was opened and recorded by the agent")
    forwarded = b"".join(b"".join(frames) for frames in captured)
    assert SECRET.encode() not in forwarded


def test_send_nowait_on_a_sealing_client_is_refused_clearly(sealed_mesh) -> None:
    from mesh import ConfigError

    m, _, _ = sealed_mesh
    with pytest.raises(ConfigError, match="use `await send"):
        m._amesh.send_nowait("test/e2e/echo", "record", {"secret": SECRET})
