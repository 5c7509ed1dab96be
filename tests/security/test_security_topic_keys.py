"""Per-topic keys: wrap to subscribers, rotate on membership change, seal batches."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError, Malformed, Replayed, Unauthenticated
from security import keys
from security.topic_keys import KIND_BATCH, TopicKeyring


@pytest.fixture
def owner_keys():
    return keys.generate()


@pytest.fixture
def owner(owner_keys):
    return TopicKeyring(owner_keys)


def member(owner, owner_keys, topic="stocks.AAPL"):
    """A subscriber that received the current key for ``topic``."""
    sub_keys = keys.generate()
    ring = TopicKeyring(sub_keys)
    tk = ring.unwrap(owner_keys.public_raw, owner.wrap_for(topic, sub_keys.public_raw))
    assert tk.topic == topic
    return ring


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x80
    return bytes(b)


def test_wrap_unwrap_and_open(owner, owner_keys):
    assert owner.rotate("stocks.AAPL") == 1
    sub = member(owner, owner_keys)
    blob = owner.seal("stocks.AAPL", b"AAPL 190.1")
    assert b"AAPL 190.1" not in blob
    assert sub.open("stocks.AAPL", blob) == b"AAPL 190.1"


def test_generation_travels_in_the_output(owner, owner_keys):
    owner.rotate("t")
    owner.rotate("t")
    blob = owner.seal("t", b"x")
    assert blob[0] == 1
    assert int.from_bytes(blob[1:5], "big") == 2


def test_batch_roundtrip(owner, owner_keys):
    owner.rotate("stocks.AAPL")
    sub = member(owner, owner_keys)
    batch = [b"tick-%d" % i for i in range(100)] + [b""]
    assert sub.open_batch("stocks.AAPL", owner.seal_batch("stocks.AAPL", batch)) == batch
    with pytest.raises(Malformed):  # a batch is not a single payload, and vice versa
        sub.open("stocks.AAPL", owner.seal_batch("stocks.AAPL", [b"a"]))
    with pytest.raises(Malformed):
        sub.open_batch("stocks.AAPL", owner.seal("stocks.AAPL", b"a"))


def test_rotation_keeps_recent_generations_and_shuts_out_departed_members(owner, owner_keys):
    owner.rotate("t")
    stayer_keys = keys.generate()
    stayer = TopicKeyring(stayer_keys)
    stayer.unwrap(owner_keys.public_raw, owner.wrap_for("t", stayer_keys.public_raw))
    leaver = member(owner, owner_keys, "t")
    in_flight = owner.seal("t", b"sent before the rotation")
    assert owner.rotate("t") == 2  # the leaver left: only the stayer gets generation 2
    assert stayer.unwrap(owner_keys.public_raw,
                         owner.wrap_for("t", stayer_keys.public_raw)).generation == 2
    after = owner.seal("t", b"after")
    assert stayer.open("t", in_flight) == b"sent before the rotation"
    assert stayer.open("t", after) == b"after"
    with pytest.raises(Unauthenticated):
        leaver.open("t", after)
    owner.rotate("t")
    owner.rotate("t")
    assert owner.generations("t") == [2, 3, 4]  # keep=2 old generations
    assert in_flight[1:5] == b"\x00\x00\x00\x01"
    with pytest.raises(Unauthenticated):
        owner.open("t", in_flight)  # generation 1 is gone


def test_tampered_payload_refused(owner, owner_keys):
    owner.rotate("t")
    sub = member(owner, owner_keys, "t")
    blob = owner.seal("t", b"payload")
    for index in (0, 3, 10, len(blob) - 1):
        with pytest.raises((Unauthenticated, Malformed)):
            sub.open("t", flip(blob, index))
    assert sub.open("t", blob) == b"payload"


def test_replayed_topic_payload_refused(owner, owner_keys):
    owner.rotate("t")
    sub = member(owner, owner_keys, "t")
    blob = owner.seal("t", b"once")
    sub.open("t", blob)
    with pytest.raises(Replayed):
        sub.open("t", blob)


def test_wrong_topic_key_refused(owner, owner_keys):
    owner.rotate("a")
    owner.rotate("b")
    sub = member(owner, owner_keys, "a")
    with pytest.raises(Unauthenticated):
        sub.open("b", owner.seal("b", b"for b members"))


def test_wrapped_key_from_someone_else_or_tampered_refused(owner, owner_keys):
    owner.rotate("t")
    sub_keys = keys.generate()
    wrapped = owner.wrap_for("t", sub_keys.public_raw)
    ring = TopicKeyring(sub_keys)
    with pytest.raises(Unauthenticated):
        ring.unwrap(keys.generate().public_raw, wrapped)  # not from the claimed owner
    with pytest.raises(Unauthenticated):
        ring.unwrap(owner_keys.public_raw, flip(wrapped, 30))
    with pytest.raises(Unauthenticated):
        TopicKeyring(keys.generate()).unwrap(owner_keys.public_raw, wrapped)  # not for them
    assert ring.current("t") is None


def test_truncated_batches_refused(owner, owner_keys):
    owner.rotate("t")
    sub = member(owner, owner_keys, "t")
    for body in [b"", b"\x00\x00\x00\x02\x00\x00\x00\x01a", b"\x00\x00\x00\x01\x00\x00\x00\x09ab",
                 b"\x00\x00\x00\x01\x00\x00\x00\x01ab", b"\x00\x00\x00\x00"]:
        blob = owner._seal("t", bytes([KIND_BATCH]) + body)  # authentic but badly framed
        with pytest.raises(Malformed):
            sub.open_batch("t", blob)


def test_misuse_is_a_config_error(owner):
    with pytest.raises(ConfigError):
        owner.seal("no-key-yet", b"x")
    with pytest.raises(ConfigError):
        owner.rotate("")
    with pytest.raises(ConfigError):
        owner.wrap_for("nothing", keys.generate().public_raw)
    with pytest.raises(Malformed):
        owner.open("t", b"short")
