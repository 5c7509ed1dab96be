"""The BATCH codec and outbox, fed bytes: round trips, caps, and every malformed body typed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import batch
from mesh.errors import Malformed
from mesh.wire import ROUTE, Cmd

messages_st = st.lists(st.lists(st.binary(max_size=64), min_size=1,
                                max_size=batch.MAX_BATCHED_FRAMES), min_size=2, max_size=40)


@given(messages_st)
def test_pack_then_unpack_gives_the_messages_back(messages):
    assert batch.unpack(batch.pack(messages), len(messages)) == messages


@given(messages_st)
def test_the_router_packs_without_the_routing_id(messages):
    with_rid = [[b"\x00rid", *m] for m in messages]
    assert batch.unpack(batch.pack(with_rid, 1), len(messages)) == messages


def test_route_frame_names_the_command_and_count():
    version, cmd, _, _, value, _ = ROUTE.unpack(batch.route_frame(7))
    assert (version, cmd, value) == (1, Cmd.BATCH, 7)


def test_every_truncation_of_a_body_is_malformed():
    body = batch.pack([[b"route-frame-0001", b"dest", b"hdr"], [b"x" * 16, b"payload"]])
    for cut in range(len(body)):
        with pytest.raises(Malformed):
            batch.unpack(body[:cut], 2)


def test_trailing_bytes_and_a_wrong_count_are_malformed():
    body = batch.pack([[b"a"], [b"b"]])
    with pytest.raises(Malformed, match="longer or shorter"):
        batch.unpack(body + b"\x00", 2)
    with pytest.raises(Malformed):
        batch.unpack(body, 3)
    with pytest.raises(Malformed, match="longer or shorter"):
        batch.unpack(batch.pack([[b"a"], [b"b"], [b"c"]]), 2)


@pytest.mark.parametrize("count", [-1, 0, 1, batch.MAX_BATCH_MESSAGES + 1])
def test_message_counts_outside_the_caps_are_malformed(count):
    with pytest.raises(Malformed, match="a batch holds"):
        batch.unpack(batch.pack([[b"a"], [b"b"]]), count)


@pytest.mark.parametrize("frames", [0, batch.MAX_BATCHED_FRAMES + 1, 0xFFFF])
def test_frame_counts_outside_the_caps_are_malformed(frames):
    body = frames.to_bytes(2, "little") + bytes(4 * min(frames, 20))
    with pytest.raises(Malformed):
        batch.unpack(body + batch.pack([[b"a"]]), 2)


def test_a_length_past_the_body_is_malformed():
    body = (1).to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little") + b"abc"
    with pytest.raises(Malformed):
        batch.unpack(body + batch.pack([[b"a"]]), 2)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(min_value=-5, max_value=2000))
def test_garbage_bodies_only_raise_malformed(body, count):
    try:
        out = batch.unpack(body, count)
    except Malformed:
        return
    assert len(out) == count
    assert all(1 <= len(m) <= batch.MAX_BATCHED_FRAMES for m in out)


def test_what_may_travel_in_a_batch():
    assert batch.batchable([b"ab", bytearray(b"cde")]) == 5
    assert batch.batchable([b"rid", b"ab"], skip=1) == 2
    assert batch.batchable([b"a", memoryview(b"numpy buffer")]) == -1  # zero-copy: alone
    assert batch.batchable([b"x" * (batch.BATCHABLE_BYTES + 1)]) == -1
    assert batch.batchable([b"x" * batch.BATCHABLE_BYTES]) == batch.BATCHABLE_BYTES
    assert batch.batchable([b""] * (batch.MAX_BATCHED_FRAMES + 1)) == -1


def test_the_outbox_keeps_order_per_destination_and_says_when_to_flush():
    box = batch.Outbox()
    assert not box
    flush = [box.add("a", [bytes([i])], 1) for i in range(batch.FLUSH_AT)]
    assert flush == [False] * (batch.FLUSH_AT - 1) + [True]
    assert not box.add("b", [b"b0"], 2)
    assert box.holds("a")
    assert len(box) == batch.FLUSH_AT + 1
    assert box.take("a") == [[bytes([i])] for i in range(batch.FLUSH_AT)]
    assert not box.holds("a")
    assert box.take("a") == []
    assert box.add("b", [b"big"], batch.MAX_BATCH_BYTES)  # the byte cap flushes too
    assert list(box.take_all()) == [("b", [[b"b0"], [b"big"]])]
    assert not box
