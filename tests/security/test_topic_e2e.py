"""Pub/sub end to end over a real mesh: publishes are sealed with per-topic keys from the
topic key service, a tap on the proxy finds no plaintext, authorized subscribers open them,
and anyone else cannot get the key."""

from __future__ import annotations

import pytest

from mesh import Forbidden
from security.key_service import KEY_SERVICE
from tests.helpers import wait_for

SECRET = "NEWS-SECRET-5d1e"
RAW_SECRET = b"RAW-NEWS-SECRET-0a77"


def test_sealed_publishes_cross_the_proxy_as_ciphertext_and_readers_open_them(topic_mesh):
    pub, alice = topic_mesh.connect("pub"), topic_mesh.connect("alice")
    sub = alice.subscribe("news.world")
    raw_sub = alice.subscribe("news.raw", raw=True)
    topic_mesh.captured.clear()
    for i in range(500):
        pub.publish("news.world", {"secret": SECRET, "i": i})
    pub.publish("news.raw", RAW_SECRET, raw=True)
    pub.flush(wait=True)
    got = [sub.get(timeout=10).data for _ in range(500)]
    assert got == [{"secret": SECRET, "i": i} for i in range(500)]
    assert raw_sub.get(timeout=10).data == RAW_SECRET
    forwarded = b"".join(topic_mesh.captured)
    assert b"news.world" in forwarded  # the tap saw the traffic...
    assert SECRET.encode() not in forwarded  # ...and none of it in the clear
    assert RAW_SECRET not in forwarded
    assert sub.refused == {}
    assert sub.gaps == 0


def test_a_subscriber_without_the_subscribe_right_cannot_get_the_key(topic_mesh):
    eve = topic_mesh.connect("eve")
    with pytest.raises(Forbidden):
        eve.request(KEY_SERVICE, "topic_key", {"topic": "news.world", "role": "subscribe"})
    with pytest.raises(Forbidden):  # nor publish: the right to one is not the other
        eve.request(KEY_SERVICE, "topic_key", {"topic": "news.world", "role": "publish"})
    grant = eve.request(KEY_SERVICE, "topic_key", {"topic": "other.x", "role": "subscribe"})
    assert grant["generation"] > 0  # what eve may read she gets


def test_the_key_service_answers_only_sealed_requests(topic_mesh):
    from mesh import Unauthenticated

    plain = topic_mesh.connect("alice", e2e=False)
    with pytest.raises(Unauthenticated):
        plain.request(KEY_SERVICE, "topic_key", {"topic": "news.world", "role": "subscribe"})


def test_a_plain_client_publishes_as_before(topic_mesh):
    alice = topic_mesh.connect("alice")
    sub = alice.subscribe("news.plain")
    admin = topic_mesh.connect("tester", e2e=False)
    admin.publish("news.plain", {"n": 1})
    admin.flush(wait=True)
    assert sub.get(timeout=10).data == {"n": 1}
    wait_for(lambda: not alice._amesh.core.subs.unopened, message="nothing refused")
