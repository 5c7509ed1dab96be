"""Topic keys, version 2 (sans-IO): publishers get only a topic generation's public key, so
they can seal but not read; subscribers open; tampering, replays, other topics, other
owners and departed members are refused."""

from __future__ import annotations

import pytest

from mesh.errors import Malformed, Replayed, Unauthenticated
from security import keys
from security.topic_keys import NoTopicKey, TopicMember, TopicOwner

TOPIC = "news.world"


@pytest.fixture
def owner_keys():
    return keys.generate()


@pytest.fixture
def owner(owner_keys):
    o = TopicOwner(owner_keys)
    o.rotate(TOPIC)
    return o


def joined(owner, owner_keys, role, topic=TOPIC):
    member_keys = keys.generate()
    m = TopicMember(member_keys)
    grant = m.accept(owner_keys.public, owner.grant(topic, member_keys.public, role))
    assert (grant.topic, grant.role) == (topic, role)
    return m


def test_a_publisher_seals_but_cannot_read(owner, owner_keys):
    pub = joined(owner, owner_keys, "publish")
    reader = joined(owner, owner_keys, "subscribe")
    blob = pub.seal(TOPIC, b"quarterly numbers")
    assert b"quarterly" not in blob
    assert reader.open(TOPIC, blob) == b"quarterly numbers"
    with pytest.raises(NoTopicKey):
        pub.open(TOPIC, blob)
    other_pub = joined(owner, owner_keys, "publish")
    with pytest.raises(NoTopicKey):
        other_pub.open(TOPIC, blob)


def test_one_session_key_per_publisher_session_and_a_fixed_overhead(owner, owner_keys):
    pub = joined(owner, owner_keys, "publish")
    reader = joined(owner, owner_keys, "subscribe")
    a, b = pub.seal(TOPIC, b"x" * 1000), pub.seal(TOPIC, b"y" * 1000)
    assert a[5:37] == b[5:37]  # same ephemeral key: one X25519 per session, not per batch
    assert len(a) == 1000 + 45 + 32
    assert reader.open(TOPIC, b) == b"y" * 1000  # out of order within the window is fine
    assert reader.open(TOPIC, a) == b"x" * 1000


def test_tampering_anywhere_is_refused(owner, owner_keys):
    pub = joined(owner, owner_keys, "publish")
    reader = joined(owner, owner_keys, "subscribe")
    blob = pub.seal(TOPIC, b"payload")
    for i in (0, 2, 10, 40, 50, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 0x04
        with pytest.raises((Unauthenticated, Malformed)):
            reader.open(TOPIC, bytes(bad))
    with pytest.raises(Malformed):
        reader.open(TOPIC, blob[:60])
    assert reader.open(TOPIC, blob) == b"payload"  # a forgery did not move the window


def test_a_replay_is_refused(owner, owner_keys):
    pub = joined(owner, owner_keys, "publish")
    reader = joined(owner, owner_keys, "subscribe")
    blob = pub.seal(TOPIC, b"once")
    reader.open(TOPIC, blob)
    with pytest.raises(Replayed):
        reader.open(TOPIC, blob)


def test_a_batch_cannot_be_moved_to_another_topic(owner, owner_keys):
    owner.rotate("news.sport")
    pub = joined(owner, owner_keys, "publish")
    reader_keys = keys.generate()
    reader = TopicMember(reader_keys)
    for t in (TOPIC, "news.sport"):
        reader.accept(owner_keys.public, owner.grant(t, reader_keys.public, "subscribe"))
    with pytest.raises((Unauthenticated, NoTopicKey)):
        reader.open("news.sport", pub.seal(TOPIC, b"world news"))


def test_rotation_shuts_out_a_departed_reader(owner, owner_keys):
    stayer_keys = keys.generate()
    stayer = TopicMember(stayer_keys)
    stayer.accept(owner_keys.public, owner.grant(TOPIC, stayer_keys.public, "subscribe"))
    leaver = joined(owner, owner_keys, "subscribe")
    pub_keys = keys.generate()
    pub = TopicMember(pub_keys)
    pub.accept(owner_keys.public, owner.grant(TOPIC, pub_keys.public, "publish"))
    in_flight = pub.seal(TOPIC, b"before")
    old = owner.current(TOPIC)
    new = owner.rotate(TOPIC)
    assert new != old
    pub.accept(owner_keys.public, owner.grant(TOPIC, pub_keys.public, "publish"))
    stayer.accept(owner_keys.public, owner.grant(TOPIC, stayer_keys.public, "subscribe"))
    after = pub.seal(TOPIC, b"after")
    assert stayer.open(TOPIC, in_flight) == b"before"  # the previous generation is kept
    assert stayer.open(TOPIC, after) == b"after"
    with pytest.raises(NoTopicKey):
        leaver.open(TOPIC, after)
    assert leaver.open(TOPIC, in_flight) == b"before"


def test_a_grant_from_another_owner_or_tampered_is_refused(owner, owner_keys):
    member_keys = keys.generate()
    m = TopicMember(member_keys)
    grant = owner.grant(TOPIC, member_keys.public, "subscribe")
    with pytest.raises(Unauthenticated):
        m.accept(keys.generate().public, grant)
    bad = bytearray(grant)
    bad[30] ^= 1
    with pytest.raises(Unauthenticated):
        m.accept(owner_keys.public, bytes(bad))
    with pytest.raises(Unauthenticated):
        TopicMember(keys.generate()).accept(owner_keys.public, grant)
    assert m.generation(TOPIC) is None
    assert m.readable(TOPIC) == []


def test_a_replay_is_refused_after_its_session_was_dropped_for_space(owner, owner_keys):
    member_keys = keys.generate()
    reader = TopicMember(member_keys, max_sessions=2)
    reader.accept(owner_keys.public, owner.grant(TOPIC, member_keys.public, "subscribe"))
    victim, *others = [joined(owner, owner_keys, "publish") for _ in range(3)]
    first = victim.seal(TOPIC, b"SELL 1000")
    assert reader.open(TOPIC, first) == b"SELL 1000"
    for other in others:  # two newer sessions: the victim's is dropped to keep two
        assert reader.open(TOPIC, other.seal(TOPIC, b"noise")) == b"noise"
    with pytest.raises(Replayed):
        reader.open(TOPIC, first)
    # its session goes on: what it seals next still opens, once
    second = victim.seal(TOPIC, b"BUY 10")
    assert reader.open(TOPIC, second) == b"BUY 10"
    with pytest.raises(Replayed):
        reader.open(TOPIC, second)
