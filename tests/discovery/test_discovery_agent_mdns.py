"""Agent processes on mDNS (real zeroconf on loopback): an agent with no endpoint finds the
router whose key it pins, announces itself (role agent, name, instance, key, version), is
never taken for a router, withdraws with goodbyes when it stops, and ``--no-mdns`` is quiet."""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

from agents.echo import Echo
from agents.procs import ManagedProcess, agent_process, router_process
from discovery.announcement import SERVICE_TYPE, Announcement
from discovery.mdns import browse, find_router
from mesh import Mesh
from security.home import Home, ensure_router
from tests.helpers import wait_for

LO = ["127.0.0.1"]


@pytest.fixture
def lan(monkeypatch: pytest.MonkeyPatch, mesh_home: Home) -> str:
    """mDNS on, on loopback, in a mesh of this test's own; no AGP_ROUTER to fall back on."""
    mesh = "t" + secrets.token_hex(4)
    monkeypatch.setenv("AGP_MDNS", "1")
    monkeypatch.setenv("AGP_MDNS_INTERFACES", "loopback")
    monkeypatch.setenv("AGP_MESH", mesh)
    monkeypatch.delenv("AGP_ROUTER", raising=False)
    return mesh


@pytest.fixture
def zc(lan: str) -> Iterator[Zeroconf]:
    z = Zeroconf(interfaces=LO)
    try:
        yield z
    finally:
        z.close()


def echo(enroll: Callable[..., str], instance: str, *extra: str) -> ManagedProcess:
    """An echo agent process started with NO endpoint (unless ``extra`` gives one)."""
    identity = enroll(f"echo-{instance}", "test/ns")
    return ManagedProcess(instance, ["-m", "agents.echo", "--namespace", "test/ns",
                                     "--instance", instance, "--identity", identity, *extra])


def agents_seen(zc: Zeroconf, mesh: str, timeout: float = 1.0) -> dict[str, Announcement]:
    return {a.instance_id: a for a in browse(timeout, role="agent", mesh=mesh, interfaces=LO,
                                             zc=zc)}


def test_agent_finds_the_router_by_mdns_and_announces_itself(
        lan: str, zc: Zeroconf, spawn: Callable[..., ManagedProcess],
        enroll: Callable[..., str], mesh_home: Home) -> None:
    router = spawn(router_process(extra=["--auth-port", "0"]))
    agent = spawn(echo(enroll, "lan1"), ready_timeout=40)
    with Mesh.connect(router.ready_info["router"]) as m:  # it serves through OUR router
        assert m.request("test/ns/echo/lan1", "whoami", timeout=5)["pid"] == agent.pid

    removed: queue.Queue[tuple[str, float]] = queue.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            removed.put((name, time.monotonic()))

    watcher = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        seen = wait_for(lambda: agents_seen(zc, lan).get("lan1"), timeout=15,
                        message="the agent's own mDNS record")
        key = mesh_home.keypair("echo-lan1").public.decode()
        assert (seen.role, seen.name, seen.server_key, seen.version, seen.port) == (
            "agent", "test/ns/echo", key, Echo.version, 0)
        assert seen.addresses == ("127.0.0.1",)
        # an agent's record is never taken for a router, even one carrying the pinned key
        assert find_router(1.5, pinned_key=key, mesh=lan, interfaces=LO, zc=zc) is None
        found = find_router(5, pinned_key=ensure_router(mesh_home).public, mesh=lan,
                            interfaces=LO, zc=zc)
        assert found is not None
        assert found.endpoint.endswith(":" + router.ready_info["router"].rsplit(":", 1)[1])

        agent.stop()  # SIGTERM: drain, then goodbyes (TTL 0)
        stopped = time.monotonic()
        name, at = removed.get(timeout=5)  # without a goodbye this would take minutes
        assert name.startswith("test-ns-echo-lan1")
        assert at - stopped < 5
        assert "lan1" not in agents_seen(zc, lan)
    finally:
        watcher.cancel()


def test_no_mdns_flag_keeps_an_agent_quiet(lan: str, zc: Zeroconf,
                                          spawn: Callable[..., ManagedProcess],
                                          enroll: Callable[..., str]) -> None:
    router = spawn(router_process(extra=["--auth-port", "0"]))
    ep = router.ready_info["router"]
    identity = enroll("echo-quiet", "test/ns")
    spawn(agent_process("agents.echo", ep, name="quiet",
                        extra=["--namespace", "test/ns", "--instance", "quiet",
                               "--identity", identity, "--no-mdns"]))
    spawn(echo(enroll, "loud", "--endpoint", ep))
    # the browse works (the loud one is seen); the quiet one, serving beside it, is not
    wait_for(lambda: "loud" in agents_seen(zc, lan), timeout=15, message="loud announced")
    assert set(agents_seen(zc, lan, timeout=2.0)) == {"loud"}
    with Mesh.connect(ep) as m:
        assert m.request("test/ns/echo/quiet", "whoami", timeout=5)["instance"].endswith("quiet")
