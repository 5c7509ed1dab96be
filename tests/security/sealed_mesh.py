"""A secure mesh whose router runs in the test process with a tap on the function it sends
every frame with (so a test can capture or tamper with what it forwards); the registry and
an e2e echo agent are real processes. Used by the end-to-end tests of requests and streams."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import router.outbound as outbound
from agents.procs import agent_process
from mesh import Mesh, batch
from mesh.wire import ROUTE, Cmd
from router.config import RouterConfig
from router.server import Router
from security.server import secure_router
from tests.helpers import wait_for


@contextmanager
def secure_router_thread() -> Iterator[Router]:
    """A secure router (CURVE, ZAP, tokens, RBAC from AGP_HOME) on ephemeral loopback ports,
    run on a thread of this process so a test can wrap the functions it sends with."""
    parts = secure_router(auth_port=0)
    r = Router(RouterConfig(bind="tcp://127.0.0.1:0", pub_bind="tcp://127.0.0.1:0"),
               access=parts.access, server_keypair=parts.server_keypair)
    r.start()
    t = threading.Thread(target=r.run, daemon=True)
    t.start()
    try:
        yield r
    finally:
        r.stop()
        t.join(5)
        parts.stop()


@pytest.fixture
def tapped_router(mesh_home, monkeypatch):
    captured: list[list[bytes]] = []
    tamper = {"on": False, "cmd": 4}  # tamper with sealed messages of this command
    real_send = outbound.send_frames

    def tampered(msg: list[bytes]) -> list[bytes]:
        """A sealed message (flag ENCRYPTED) of the chosen command with its last byte
        flipped; any other message as it is."""
        if (tamper["on"] and len(msg) > 3 and msg[1][1] == tamper["cmd"]
                and msg[1][2] & 2):
            last = bytearray(msg[-1])
            last[-1] ^= 0x01
            return [*msg[:-1], bytes(last)]
        return msg

    def tap(sock, frames):
        frames = list(frames)
        if frames[1][1] == Cmd.BATCH:  # what a batch carries, message by message
            subs = batch.unpack(bytes(frames[2]), ROUTE.unpack(frames[1])[4])
            messages = [tampered([frames[0], *sub]) for sub in subs]
            frames = [frames[0], frames[1], batch.pack(messages, 1)]
        else:
            messages = [tampered(frames)]
            frames = messages[0]
        if len(captured) < 10_000:
            captured.extend([bytes(f) for f in m] for m in messages)
        real_send(sock, frames)

    monkeypatch.setattr(outbound, "send_frames", tap)
    with secure_router_thread() as r:
        yield r, captured, tamper


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
                                   {"name": "test/e2e/echo"}),
                 message="agent registered")
        yield m, captured, tamper
