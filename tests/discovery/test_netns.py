"""Across hosts: three network namespaces on one bridged LAN, real processes, real mDNS.

``sw`` holds the bridge, the router (secure, announcing itself on 10.77.0.1) and the
registry; ``a`` and ``b`` are hosts cabled to it by veth links. Echo agents (``far`` on
``a``, ``near`` on ``b``) and probe clients on ``a`` and ``b`` start with NO endpoint: they
find the router over mDNS across the link and trust it because its announced key is the one
in the (shared, on-disk) AGP_HOME trust store. Then requests and pub/sub cross the links,
and ``a``'s cable is pulled: the router and the registry must drop ``far`` within 5 s
(requests then all go to ``near``), and when the cable is plugged back ``far`` is back,
exactly once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from security.home import Home
from tests.discovery.netns import NetLab, NsProcess, netns_unavailable
from tests.helpers import wait_for

pytestmark = pytest.mark.netns

SERVICE = "test/ns/echo"
DETECT_BOUND = 5.0
HEAL_BOUND = 15.0  # TCP retransmission backoff after a cable pull sets the pace; see report


@pytest.fixture
def lab(mesh_home: Home, log_dir: Path) -> Iterator[NetLab]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NetLab(("sw", "a", "b"), log_dir) as lab:
        yield lab


def ns_env(mesh: str, **extra: str) -> dict[str, str | None]:
    """Added to this process's environment; None unsets (no endpoint, interface or key)."""
    env: dict[str, str | None] = dict.fromkeys(
        ("AGP_ROUTER", "AGP_MDNS_INTERFACES", "AGP_SERVER_KEY"))
    env.update(AGP_MDNS="1", AGP_MESH=mesh, PYTHONUNBUFFERED="1", **extra)
    return env


def start_router(lab: NetLab, mesh: str) -> NsProcess:
    return lab.spawn("sw", "router", ["-m", "router", "--bind", "tcp://0.0.0.0:0",
                                      "--pub-bind", "tcp://0.0.0.0:0", "--auth-port", "0"],
                     ns_env(mesh))


def echo_args(enroll: Any, instance: str) -> list[str]:
    """An echo agent with NO endpoint: it must find the router over mDNS."""
    identity = enroll(f"echo-{instance}", "test/ns")
    return ["-m", "agents.echo", "--namespace", "test/ns", "--instance", instance,
            "--identity", identity]


def instances(probe: NsProcess) -> list[str] | None:
    found = polled(probe, "router_instances", service=SERVICE)
    return sorted(found) if found is not None else None


def registered(probe: NsProcess) -> list[str] | None:
    found = polled(probe, "registry", name=SERVICE)
    return sorted(found) if found is not None else None


def polled(probe: NsProcess, op: str, **args: Any) -> Any:
    """A probe's answer, or None when its call failed (a registry busy healing, say)."""
    try:
        return probe.call(op, timeout=5, **args)
    except AssertionError:
        return None


def test_mdns_requests_pubsub_and_a_pulled_cable_across_namespaces(
        lab: NetLab, mesh_home: Home, enroll: Any) -> None:
    mesh = "t" + secrets.token_hex(4)
    router = start_router(lab, mesh)
    port = router.wait_ready(30)["router"].rsplit(":", 1)[1]
    enroll("registry", "agp/system")
    registry = lab.spawn("sw", "registry",
                         ["-m", "discovery.service", "--endpoint", f"tcp://127.0.0.1:{port}",
                          "--identity", "registry"], ns_env(mesh))
    agent = lab.spawn("a", "agent-far", echo_args(enroll, "far"), ns_env(mesh))
    other = lab.spawn("b", "agent-near", echo_args(enroll, "near"), ns_env(mesh))
    near = lab.spawn("b", "probe-b", ["-m", "tests.discovery.netns_probe"],
                     ns_env(mesh, AGP_IDENTITY="tester"))
    far = lab.spawn("a", "probe-a", ["-m", "tests.discovery.netns_probe"],
                    ns_env(mesh, AGP_IDENTITY="tester"))
    registry.wait_ready(30)
    agent_pid = agent.wait_ready(40)["pid"]
    other.wait_ready(40)
    both = [f"{SERVICE}/far", f"{SERVICE}/near"]
    router_ep = f"tcp://{lab.addr['sw']}:{port}"
    # found by mDNS across the link: the router's LAN address, never a configured one
    assert near.wait_ready(40)["endpoint"] == router_ep
    assert far.wait_ready(40)["endpoint"] == router_ep

    # requests cross both links (b -> sw -> a), to the instance found by mDNS
    assert near.call("request", dest=f"{SERVICE}/far", action="whoami")["pid"] == agent_pid
    assert near.call("request", dest=SERVICE, action="echo", data={"x": 1}) == {"x": 1}
    wait_for(lambda: instances(near) == both, timeout=10, message="both in the router")
    wait_for(lambda: registered(near) == ["far", "near"], timeout=10,
             message="both registered")
    # pub/sub crosses them too: published on a, delivered on b, in order, none lost
    near.call("subscribe", topic="netns.ticks")
    sent = list(range(50))
    far.call("publish", topic="netns.ticks", items=sent)
    wait_for(lambda: near.call("received") == sent, timeout=10, message="ticks across")
    far.stop()

    # pull a's cable: no FIN, no RST; only heartbeats can tell
    pulled = time.monotonic()
    lab.link("a", up=False)
    wait_for(lambda: instances(near) == [f"{SERVICE}/near"], timeout=DETECT_BOUND,
             interval=0.05, message="agent gone from the router's balancing")
    router_gone = time.monotonic() - pulled
    wait_for(lambda: registered(near) == ["near"],
             timeout=max(0.1, DETECT_BOUND - router_gone), interval=0.05,
             message="agent's lease expired in the registry")
    detected = time.monotonic() - pulled
    assert detected < DETECT_BOUND
    assert agent.alive()
    answered = {near.call("request", dest=SERVICE, action="whoami")["instance"]
                for _ in range(6)}
    assert answered == {f"{SERVICE}/near"}  # nothing is sent down the pulled cable

    plugged = time.monotonic()
    lab.link("a", up=True)
    wait_for(lambda: instances(near) == both, timeout=HEAL_BOUND, interval=0.1,
             message="agent back in the router")
    wait_for(lambda: registered(near) == ["far", "near"], timeout=HEAL_BOUND, interval=0.1,
             message="agent back in the registry")
    healed = time.monotonic() - plugged
    settle = time.monotonic() + 1.5  # and it stays one instance (no late duplicate)
    while time.monotonic() < settle:
        assert instances(near) == both
        assert registered(near) == ["far", "near"]
        time.sleep(0.1)
    assert near.call("request", dest=f"{SERVICE}/far", action="whoami")["pid"] == agent_pid
    print(f"netns: router dropped the agent {router_gone:.2f}s after the cable pull, "
          f"registry {detected:.2f}s; back in both {healed:.2f}s after the plug")
