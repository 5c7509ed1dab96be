"""Exported counters only grow: a closed subscription, a client that closed and went, an
instance that left the router keep what they counted; and a process with two agents exposes
each metric family once (strict parsers reject a family named twice)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh import AsyncMesh, metrics
from mesh.drop_reasons import MAX_TOPIC_SERIES, add_capped
from mesh.wire import Cmd, pack_route
from router.control_status import ControlCollector, StatusCollector
from tests.helpers import until
from tests.observability.test_metrics import value

TOPIC = "mono.ticks"


def scrape(registry: CollectorRegistry) -> tuple[str, dict[str, Any]]:
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def client_drops(registry: CollectorRegistry) -> dict[str, float]:
    """The drop counters this test moves; a missing series reads as 0 (what a reset shows)."""
    _, fams = scrape(registry)
    out = {}
    for key, sample, labels in (
            ("queue_full", "agp_client_subscription_dropped_total",
             {"topic": TOPIC, "reason": "queue_full"}),
            ("callback_error", "agp_client_subscription_dropped_total",
             {"topic": TOPIC, "reason": "callback_error"}),
            ("unopened", "agp_client_pubsub_unopened_total", {"reason": "malformed"})):
        try:
            out[key] = value(fams, sample, **labels)
        except KeyError:
            out[key] = 0.0
    return out


def test_client_drop_counters_survive_closed_subscriptions_and_gone_clients(
        router, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = metrics.ClientStats()
    monkeypatch.setattr(metrics, "CLIENT", stats)  # as enable_client_metrics() would
    # the callback's logged traceback would hold the clients (its frames) in pytest's log
    # capture, and this test needs them gone
    monkeypatch.setattr(logging.getLogger("agp.pubsub"), "disabled", True)
    registry = CollectorRegistry()
    registry.register(metrics.StatsCollector([stats]))
    endpoint = router.ready_info["router"]
    seen: list[dict[str, float]] = []

    async def main() -> None:
        pub = await AsyncMesh.connect(endpoint)
        sub_client = await AsyncMesh.connect(endpoint, sub_queue=2)
        try:
            slow = await sub_client.subscribe(TOPIC)  # never read: its queue overflows
            calls: list[object] = []

            def on_message(msg: Any) -> None:
                calls.append(msg.data)
                if msg.data == "raise":
                    raise RuntimeError("a handler bug")

            failing = await sub_client.subscribe(TOPIC, on_message)
            # a PUBLISH whose payload is no msgpack (0xc1 never is): unopened, malformed
            pub.core.send_frames([pack_route(Cmd.PUBLISH, 0, 0, 1, 0), TOPIC.encode(), b"",
                                  b"\xc1"])
            for i in range(20):
                pub.publish(TOPIC, i)
            pub.publish(TOPIC, "raise")
            pub.publish(TOPIC, "last")
            await until(lambda: "last" in calls, 10, "all messages delivered")
            seen.append(client_drops(registry))
            assert seen[-1] == {"queue_full": 20.0, "callback_error": 1.0, "unopened": 1.0}
            slow.close()
            failing.close()
            seen.append(client_drops(registry))
        finally:
            await pub.close()
            await sub_client.close()

    asyncio.run(main())
    gc.collect()
    assert not list(stats.clients)  # both clients are gone
    seen.append(client_drops(registry))
    for before, after in zip(seen, seen[1:], strict=False):
        for key, n in before.items():
            assert after[key] >= n, (key, seen)
    assert seen[-1] == seen[0]


def test_retired_topics_are_bounded() -> None:
    totals: dict[tuple[str, str], int] = {}
    for i in range(MAX_TOPIC_SERIES + 50):
        add_capped(totals, (f"t{i}", "queue_full"), 1)
    assert len(totals) <= MAX_TOPIC_SERIES + 1
    assert sum(totals.values()) == MAX_TOPIC_SERIES + 50  # none lost, the rest as 'other'
    assert totals[("other", "queue_full")] == 50


def test_mesh_served_total_keeps_what_departed_instances_served() -> None:
    instances = [{"name": "svc/a/i1", "served": 1000, "capacity": 4, "inflight": 0},
                 {"name": "svc/a/i2", "served": 600, "capacity": 4, "inflight": 0}]
    snap = {"instances": instances}

    def fetch() -> tuple[dict[str, Any], list[dict[str, Any]], None]:
        return ({"router_id": "r1", "requests": 0},
                [{"service": "svc/a", "instances": list(snap["instances"])}], None)

    status = StatusCollector(fetch)
    registry = CollectorRegistry()
    registry.register(ControlCollector(status))

    def served() -> float:
        status._publish(status.poll())
        return value(scrape(registry)[1], "agp_mesh_served_total", service="svc/a")

    assert served() == 1600
    snap["instances"] = [instances[0]]  # i2 left (scaled down)
    assert served() == 1600
    snap["instances"] = [{**instances[0], "served": 1010},
                         {**instances[1], "served": 5}]  # i2 restarted: counts from 0 again
    assert served() == 1615
    assert served() == 1615  # nothing new served: nothing added


class FakeAgent:
    """The attributes AgentStats reads (an Agent needs a router)."""

    def __init__(self, service: str, *, served: int = 1, failed: int = 0, dropped: int = 1,
                 inflight: int = 0) -> None:
        self.service = service
        self.served = served
        self.failed = failed
        self.dropped: dict[str, int] = {"overloaded": dropped}
        self._tasks: dict[str, object] = {f"t{i}": object() for i in range(inflight)}
        self.capacity = 4


def test_two_agents_in_one_process_expose_each_family_once() -> None:
    sources = []
    for svc in ("ns/a", "ns/b"):
        st = metrics.AgentStats(FakeAgent(svc))
        st.inbound("request", 10)
        st.handled("echo", 0.001, None)
        sources.append(st)
    registry = CollectorRegistry()
    registry.register(metrics.StatsCollector(sources))
    text, fams = scrape(registry)
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert helps, text
    assert len(helps) == len(set(helps)), text
    for svc in ("ns/a", "ns/b"):
        assert value(fams, "agp_agent_messages_total", service=svc, pattern="request") == 1
        assert value(fams, "agp_agent_dropped_total", service=svc, reason="overloaded") == 1
        assert value(fams, "agp_agent_handler_duration_seconds_count", service=svc,
                     action="echo", outcome="ok") == 1


def test_two_agents_of_one_service_in_one_process_expose_one_summed_series() -> None:
    sources = []
    for _ in range(2):
        st = metrics.AgentStats(FakeAgent("ns/a", served=2, failed=1, dropped=3, inflight=1))
        st.inbound("request", 10)
        st.handled("echo", 0.001, None)
        sources.append(st)
    registry = CollectorRegistry()
    registry.register(metrics.StatsCollector(sources))
    text, fams = scrape(registry)
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines()
              if line and not line.startswith("#")]
    assert len(series) == len(set(series)), text  # no name{labels} twice
    assert value(fams, "agp_agent_messages_total", service="ns/a", pattern="request") == 2
    assert value(fams, "agp_agent_served_total", service="ns/a") == 4
    assert value(fams, "agp_agent_dropped_total", service="ns/a", reason="overloaded") == 6
    assert value(fams, "agp_agent_inflight", service="ns/a") == 2
    assert value(fams, "agp_agent_capacity", service="ns/a") == 8
    assert value(fams, "agp_agent_handler_duration_seconds_count", service="ns/a",
                 action="echo", outcome="ok") == 2
    assert value(fams, "agp_agent_received_bytes_total", service="ns/a") == 20
