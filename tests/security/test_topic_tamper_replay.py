"""Sealed pub/sub batches that were tampered with or replayed on the way are refused by
the subscriber and counted with their reason; the subscription goes on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh import metrics
from tests.helpers import wait_for

TOPIC = "news.world"


def test_tampered_and_replayed_batches_are_refused_and_counted(topic_mesh):
    pub, alice = topic_mesh.connect("pub"), topic_mesh.connect("alice")
    sub = alice.subscribe(TOPIC)
    pub.publish(TOPIC, "warm-up")
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == "warm-up"

    topic_mesh.mode["tamper"] = True
    pub.publish(TOPIC, "tampered")
    pub.flush(wait=True)
    wait_for(lambda: sub.refused.get("tampered") == 1, message="the tampered batch counted")
    topic_mesh.mode["tamper"] = False

    topic_mesh.mode["replay"] = True  # the proxy sends each sealed batch twice
    pub.publish(TOPIC, "once")
    pub.flush(wait=True)
    wait_for(lambda: sub.refused.get("replayed") == 1, message="the replayed batch counted")
    topic_mesh.mode["replay"] = False
    assert sub.get(timeout=10).data == "once"

    pub.publish(TOPIC, "after")
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == "after"  # nothing else changed
    assert sub.queue == type(sub.queue)()
    counters = alice._amesh.core.counters
    assert counters["pubsub_refused_tampered"] == 1
    assert counters["pubsub_refused_replayed"] == 1
    # and on /metrics, one counter with the reason as a label
    registry, stats = CollectorRegistry(), metrics.ClientStats()
    registry.register(metrics.StatsCollector([stats]))
    stats.track(alice._amesh)
    samples = {(s.name, s.labels.get("reason")): s.value
               for fam in text_string_to_metric_families(generate_latest(registry).decode())
               for s in fam.samples}
    assert samples[("agp_client_pubsub_unopened_total", "tampered")] == 1
    assert samples[("agp_client_pubsub_unopened_total", "replayed")] == 1


def test_a_plain_subscriber_counts_sealed_messages_it_cannot_open(topic_mesh):
    pub = topic_mesh.connect("pub")
    plain = topic_mesh.connect("alice", e2e=False)
    sub = plain.subscribe(TOPIC)
    pub.publish(TOPIC, "sealed")
    pub.flush(wait=True)
    wait_for(lambda: sub.refused.get("no_topic_key") == 1, message="counted as unopenable")
    assert not sub.queue
