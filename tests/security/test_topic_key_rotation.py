"""When a reader loses the subscribe right (the policy file is edited), the topic key
service rotates the topic: the remaining reader keeps receiving, the publisher seals under
the new generation, and the removed reader can no longer open what follows (counted, and
raised on its subscription)."""

from __future__ import annotations

import pytest

from mesh import DeadlineExceeded, Forbidden
from security.key_service import KEY_SERVICE, NOTICE_TOPIC
from tests.helpers import wait_for

TOPIC = "news.world"


def crypto(m):
    return m._amesh.core.subs.crypto


def test_removing_a_readers_right_rotates_the_topic_key(topic_mesh):
    pub, alice, bob = (topic_mesh.connect(n) for n in ("pub", "alice", "bob"))
    watcher = topic_mesh.connect("tester", e2e=False)
    notices = watcher.subscribe(NOTICE_TOPIC)
    subs = {"alice": alice.subscribe(TOPIC), "bob": bob.subscribe(TOPIC)}
    for i in range(100):
        pub.publish(TOPIC, {"before": i})
    pub.flush(wait=True)
    for s in subs.values():
        assert [s.get(timeout=10).data for _ in range(100)] == [{"before": i} for i in range(100)]
    old = crypto(pub).member.generation(TOPIC)
    assert old == crypto(bob).member.generation(TOPIC)

    def drop_bob(doc):  # bob keeps calling the system services, but may not read news
        for b in doc["bindings"]:
            if b.get("subject") == "bob":
                b["roles"] = ["caller"]
    topic_mesh.edit_policy(drop_bob)

    notice = notices.get(timeout=15).data
    while notice.get("topic") != TOPIC:
        notice = notices.get(timeout=15).data
    new = notice["generation"]
    assert new != old
    wait_for(lambda: crypto(pub).member.generation(TOPIC) == new, timeout=15,
             message="the publisher took the new generation")
    for i in range(100):
        pub.publish(TOPIC, {"after": i})
    pub.flush(wait=True)
    assert [subs["alice"].get(timeout=10).data for _ in range(100)] == \
        [{"after": i} for i in range(100)]
    assert crypto(alice).member.generation(TOPIC) == new
    # bob got the ciphertexts but no key to open them: counted, and raised
    wait_for(lambda: subs["bob"].refused.get("forbidden", 0) >= 100, timeout=15,
             message="bob's refusals counted")
    with pytest.raises(Forbidden):
        subs["bob"].get(timeout=5)
    assert bob._amesh.core.counters.get("pubsub_refused_forbidden", 0) >= 100
    assert crypto(bob).member.readable(TOPIC) == [old]  # he never got the new one
    with pytest.raises(Forbidden):
        bob.request(KEY_SERVICE, "topic_key", {"topic": TOPIC, "role": "subscribe"})
    stats = watcher.request(KEY_SERVICE, "stats")
    assert stats["rotations"] >= 1


def test_a_reader_that_keeps_the_right_sees_no_rotation(topic_mesh):
    pub, alice = topic_mesh.connect("pub"), topic_mesh.connect("alice")
    sub = alice.subscribe(TOPIC)
    pub.publish(TOPIC, 1)
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == 1
    gen = crypto(pub).member.generation(TOPIC)

    def add_eve_elsewhere(doc):  # an unrelated edit: nobody lost a right on news.>
        doc["bindings"].append({"subject": "eve", "roles": ["reader"]})
    topic_mesh.edit_policy(add_eve_elsewhere)
    wait_for(lambda: alice.request(KEY_SERVICE, "topic_key",
                                   {"topic": TOPIC, "role": "subscribe"})["generation"] == gen,
             message="the key service still hands out the same generation")
    pub.publish(TOPIC, 2)
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == 2
    with pytest.raises(DeadlineExceeded):
        sub.get(timeout=0.2)
    assert crypto(pub).member.generation(TOPIC) == gen


def test_revoking_a_readers_key_rotates_the_topic_key(topic_mesh):
    pub, alice, bob = (topic_mesh.connect(n) for n in ("pub", "alice", "bob"))
    notices = topic_mesh.connect("tester", e2e=False).subscribe(NOTICE_TOPIC)
    sub = alice.subscribe(TOPIC)
    bob.subscribe(TOPIC)
    pub.publish(TOPIC, "before")
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == "before"
    old = crypto(pub).member.generation(TOPIC)
    topic_mesh.home.trust().revoke("bob", reason="test")
    notice = notices.get(timeout=15).data
    while notice.get("topic") != TOPIC:
        notice = notices.get(timeout=15).data
    assert notice["generation"] != old
    wait_for(lambda: crypto(pub).member.generation(TOPIC) == notice["generation"],
             timeout=15, message="the publisher took the new generation")
    pub.publish(TOPIC, "after")
    pub.flush(wait=True)
    assert sub.get(timeout=10).data == "after"
