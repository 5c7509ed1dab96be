"""A partition between an agent and the router: detected within 5 s, healed with one instance.

The agent process reaches the router only through a :class:`BlackholeProxy`. Blackholing it
keeps the TCP connection open but silent, so only heartbeats can tell: the router must drop
the agent from balancing, and the registry its lease, within 5 s; a second instance (on a
direct connection) then takes every request. After the heal the agent is back in both, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from agents.procs import ManagedProcess, agent_process
from discovery.service import REGISTRY_SERVICE
from mesh import DeadlineExceeded, Mesh, NoSuchService, Unavailable
from tests.discovery.blackhole import BlackholeProxy
from tests.helpers import wait_for

SERVICE = "test/ns/echo"
DETECT_BOUND = 5.0  # seconds: the mesh's failure-detection budget
HEAL_BOUND = 5.0  # seconds from the heal until the instance is back in router and registry


@pytest.fixture
def registry(spawn: Callable[..., ManagedProcess], router: ManagedProcess,
             enroll: Callable[..., str]) -> ManagedProcess:
    enroll("registry", "agp/system")
    return spawn(agent_process("discovery.service", router.ready_info["router"],
                               name="registry", extra=["--identity", "registry"]))


def start_agent(spawn: Callable[..., ManagedProcess], enroll: Callable[..., str],
                endpoint: str, instance: str) -> ManagedProcess:
    identity = enroll(f"echo-{instance}", "test/ns")
    return spawn(agent_process("agents.echo", endpoint, name=instance,
                               extra=["--namespace", "test/ns", "--instance", instance,
                                      "--identity", identity]))


def router_instances(m: Mesh, service: str = SERVICE) -> list[str]:
    """Instance names (``service/instance``) the router balances ``service`` over."""
    return [i["name"] for s in m.request("agp/router", "services", timeout=2)
            if s["service"] == service for i in s["instances"]]


def registry_instances(m: Mesh, service: str = SERVICE) -> list[str] | None:
    try:
        return [r["instance"] for r in m.request(REGISTRY_SERVICE, "lookup",
                                                 {"name": service}, timeout=2)]
    except (NoSuchService, Unavailable, DeadlineExceeded):
        return None


@pytest.fixture(params=["hold", "drop"])
def proxy(request: pytest.FixtureRequest, router: ManagedProcess) -> Iterator[BlackholeProxy]:
    with BlackholeProxy(router.ready_info["router"], mode=request.param) as p:
        yield p


def test_partition_is_detected_within_5s_and_heals_without_a_duplicate(
        router: ManagedProcess, registry: ManagedProcess, proxy: BlackholeProxy,
        spawn: Callable[..., ManagedProcess], enroll: Callable[..., str]) -> None:
    start_agent(spawn, enroll, router.ready_info["router"], "steady")
    victim = start_agent(spawn, enroll, proxy.endpoint, "victim")
    both = [f"{SERVICE}/steady", f"{SERVICE}/victim"]
    with Mesh.connect(router.ready_info["router"]) as m:
        wait_for(lambda: sorted(router_instances(m)) == both, message="both in the router")
        wait_for(lambda: sorted(registry_instances(m) or []) == ["steady", "victim"],
                 message="both in the registry")
        assert m.request(f"{SERVICE}/victim", "whoami")["pid"] == victim.pid

        cut = time.monotonic()
        proxy.blackhole()
        wait_for(lambda: router_instances(m) == [f"{SERVICE}/steady"], timeout=DETECT_BOUND,
                 interval=0.05, message="victim gone from the router's balancing")
        router_gone = time.monotonic() - cut
        wait_for(lambda: registry_instances(m) == ["steady"],
                 timeout=max(0.1, DETECT_BOUND - router_gone), interval=0.05,
                 message="victim's lease expired in the registry")
        detected = time.monotonic() - cut
        assert detected < DETECT_BOUND
        answered = {m.request(SERVICE, "whoami", timeout=2)["instance"] for _ in range(10)}
        assert answered == {f"{SERVICE}/steady"}  # the partitioned instance gets nothing
        assert victim.alive()  # partitioned, not dead

        healed_at = time.monotonic()
        resets = proxy.heal()
        assert resets == (1 if proxy.mode == "drop" else 0)  # drop mode lost bytes: reset
        wait_for(lambda: sorted(router_instances(m)) == both, timeout=HEAL_BOUND,
                 interval=0.05, message="victim back in the router")
        wait_for(lambda: sorted(registry_instances(m) or []) == ["steady", "victim"],
                 timeout=HEAL_BOUND, interval=0.05, message="victim back in the registry")
        healed = time.monotonic() - healed_at
        # one instance each, and it stays so (no late duplicate from queued HELLO/READY)
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:
            assert sorted(router_instances(m)) == both
            assert sorted(registry_instances(m) or []) == ["steady", "victim"]
            time.sleep(0.1)
        listed = [r["instance"] for r in m.request(REGISTRY_SERVICE, "list")
                  if r["name"] == SERVICE]
        assert sorted(listed) == ["steady", "victim"]
        assert m.request(f"{SERVICE}/victim", "whoami", timeout=2)["pid"] == victim.pid
        # HELLOs resent during the partition may all arrive at the heal: only the first
        # answer re-announces the agent (once at start, once after the heal)
        assert victim.log_dir is not None
        log_text = (victim.log_dir / f"{victim.name}.log").read_text()
        assert log_text.count(f"serving {SERVICE} as") == 2, log_text
        print(f"partition[{proxy.mode}]: router dropped the agent after {router_gone:.2f}s, "
              f"registry after {detected:.2f}s; healed in {healed:.2f}s "
              f"(connections reset at the heal: {resets})")
