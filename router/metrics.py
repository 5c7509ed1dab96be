"""Prometheus export of the router's counters, read at scrape time (no cost per message)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from router.server import Router


class RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self.router
        s = r.stats
        msgs = CounterMetricFamily("agp_router_messages_total", "Messages routed, by pattern",
                                   labels=["pattern"])
        msgs.add_metric(["request"], s.requests)
        msgs.add_metric(["reply"], s.replies)
        msgs.add_metric(["send"], s.sends)
        msgs.add_metric(["publish"], s.published_messages)
        msgs.add_metric(["stream_chunk"], s.stream_chunks)
        msgs.add_metric(["send_refusal"], s.send_refusals)
        yield msgs
        batches = CounterMetricFamily(
            "agp_router_batches_total", "BATCH messages (several small messages in one frame), "
            "by direction", labels=["direction"])
        batches.add_metric(["in"], s.batches_in)
        batches.add_metric(["out"], s.batches_out)
        yield batches
        batched = CounterMetricFamily("agp_router_batched_messages_total",
                                      "Messages carried inside BATCHes, by direction",
                                      labels=["direction"])
        batched.add_metric(["in"], s.batched_in)
        batched.add_metric(["out"], s.batched_out)
        yield batched
        yield CounterMetricFamily("agp_router_received_bytes_total", "Bytes received from peers",
                                  value=s.bytes_in)
        drops = CounterMetricFamily("agp_router_drops_total", "Messages not delivered, by reason",
                                    labels=["reason"])
        for reason, n in sorted(s.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        denials = CounterMetricFamily("agp_router_denials_total", "RBAC denials, by action",
                                      labels=["action"])
        for action, n in sorted(s.denials.items()):
            denials.add_metric([action], n)
        yield denials
        auth = CounterMetricFamily("agp_router_auth_failures_total",
                                   "Refused HELLOs, by reason", labels=["reason"])
        for reason, n in sorted(s.auth_failures.items()):
            auth.add_metric([reason], n)
        yield auth
        malformed = CounterMetricFamily("agp_router_malformed_total",
                                        "Malformed messages refused, by reason", labels=["reason"])
        for reason, n in sorted(s.malformed_by.items()):
            malformed.add_metric([reason], n)
        yield malformed
        yield GaugeMetricFamily("agp_router_peers", "Connected peers", value=len(r.peers))
        inst = GaugeMetricFamily("agp_router_instances", "Instances per service",
                                 labels=["service"])
        depth = GaugeMetricFamily("agp_router_queue_depth", "Requests waiting per service",
                                  labels=["service"])
        inflight = GaugeMetricFamily("agp_router_inflight", "Requests in flight per service",
                                     labels=["service"])
        for name, svc in list(r.table.services.items()):
            label = name.decode(errors="replace")
            inst.add_metric([label], len(svc.instances))
            depth.add_metric([label], len(svc.queue))
            inflight.add_metric([label], sum(len(i.inflight) for i in svc.instances))
        yield inst
        yield depth
        yield inflight
