"""End-to-end boxes: sessions, sender proof, replay window, tampering, eviction."""

from __future__ import annotations

import dataclasses
import struct

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import Box, PublicKey

from mesh.errors import Malformed, Replayed, Unauthenticated, UnknownSession
from security import keys
from security.e2e import HEADER_LEN, Opener, OpenError, SealedParts, Sealer
from security.replay import ReplayWindow


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def alice():
    return keys.generate()


@pytest.fixture
def bob():
    return keys.generate()


@pytest.fixture
def sealer(alice, clock):
    return Sealer(alice, clock=clock)


@pytest.fixture
def opener(bob, clock):
    return Opener(bob, clock=clock)


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


# ---- happy paths --------------------------------------------------------------------------

def test_seal_and_open_one_frame(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public_raw, b"train the model", aad=b"msg-1|acme/ml/trainer")
    assert len(parts.nonce) == 24
    assert len(parts.session_pub) == 32
    assert len(parts.session_proof) == 40
    assert b"train the model" not in parts.ciphertext
    assert opener.open(alice.public_raw, parts, aad=b"msg-1|acme/ml/trainer") == b"train the model"


def test_multi_frame_payload_is_sealed_frame_by_frame(sealer, opener, alice, bob):
    frames = [b"header", b"\x00" * 100_000, memoryview(b"array bytes")]
    parts = sealer.seal(bob.public_raw, frames)
    assert len(parts.frames) == 3
    assert opener.open_frames(alice.public_raw, parts) == [bytes(f) for f in frames]


def test_header_roundtrip_for_the_envelope(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public, b"z85 keys work too")
    header = parts.header()
    assert len(header) == HEADER_LEN
    again = SealedParts.from_header(header, list(parts.frames))
    assert opener.open(alice.public, again) == b"z85 keys work too"
    with pytest.raises(Malformed):
        SealedParts.from_header(header[:-1], list(parts.frames))


def test_standard_libsodium_opens_the_frame(sealer, bob):
    """Interop: the session key is plain Box(recipient_secret, session_pub).shared_key(), the
    frame plain AEGIS-256 with the nonce padded to 32 bytes and (index, count) after the aad."""
    parts = sealer.seal(bob.public_raw, b"plain libsodium", aad=b"ctx")
    key = Box(bob.private_key(), PublicKey(parts.session_pub)).shared_key()
    inner = nacl.bindings.crypto_aead_aegis256_decrypt(
        parts.ciphertext, b"ctx" + struct.pack(">HH", 0, 1), parts.nonce + bytes(8), key)
    assert inner == b"plain libsodium"


def test_session_is_reused_and_nonces_never_repeat(sealer, opener, alice, bob):
    seen, sessions = set(), set()
    for i in range(500):
        parts = sealer.seal(bob.public_raw, [b"a", b"b"] if i % 2 else b"x")
        sessions.add(parts.session_pub)
        for j in range(len(parts.frames)):
            counter = struct.unpack(">Q", parts.nonce[16:])[0] + j
            nonce = parts.nonce[:16] + struct.pack(">Q", counter)
            assert nonce not in seen
            seen.add(nonce)
        opener.open_frames(alice.public_raw, parts)
    assert len(sessions) == 1  # one ephemeral key (and one cached Box) for all 500
    assert len(seen) == 750


def test_session_rotates_after_n_messages_and_after_t_seconds(alice, bob, clock):
    sealer = Sealer(alice, max_messages=3, max_seconds=60, clock=clock)
    opener = Opener(bob, clock=clock)
    pubs = []
    for _ in range(7):
        parts = sealer.seal(bob.public_raw, b"m")
        pubs.append(parts.session_pub)
        assert opener.open(alice.public_raw, parts) == b"m"
    assert len(set(pubs)) == 3  # 3 + 3 + 1
    clock.t += 61
    parts = sealer.seal(bob.public_raw, b"later")
    assert parts.session_pub not in pubs
    assert opener.open(alice.public_raw, parts) == b"later"


def test_out_of_order_delivery_within_the_window_is_fine(sealer, opener, alice, bob):
    sealed = [sealer.seal(bob.public_raw, bytes([i])) for i in range(10)]
    for i in reversed(range(10)):
        assert opener.open(alice.public_raw, sealed[i]) == bytes([i])


# ---- refusals -----------------------------------------------------------------------------

def test_replayed_message_refused(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public_raw, b"pay 10")
    opener.open(alice.public_raw, parts)
    with pytest.raises(Replayed):
        opener.open(alice.public_raw, parts)


def test_message_older_than_the_window_refused(alice, bob, clock):
    sealer, opener = Sealer(alice, clock=clock), Opener(bob, window=64, clock=clock)
    old = sealer.seal(bob.public_raw, b"old")
    for _ in range(70):
        opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"new"))
    with pytest.raises(Replayed, match="older"):
        opener.open(alice.public_raw, old)


def test_session_older_than_max_age_refused(alice, bob, clock):
    sealer = Sealer(alice, max_seconds=10_000, clock=clock)
    opener = Opener(bob, max_session_age=600, clock=clock)
    opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"fresh"))
    clock.t += 601
    with pytest.raises(Replayed, match="maximum age"):
        opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"stale session"))


def test_session_from_the_future_refused(alice, bob):
    sealer = Sealer(alice, clock=lambda: 2_000_000_000.0)
    opener = Opener(bob, clock=lambda: 1_000_000_000.0)
    with pytest.raises(OpenError, match="future"):
        opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"x"))


@pytest.mark.parametrize("part", ["nonce_prefix", "nonce_counter", "ciphertext", "session_pub",
                                  "session_proof", "proof_time"])
@pytest.mark.parametrize("established", [False, True])
def test_tampered_part_refused(sealer, opener, alice, bob, part, established):
    if established:
        opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"first"))
    parts = sealer.seal(bob.public_raw, b"secret payload")
    field, index = {"nonce_prefix": ("nonce", 3), "nonce_counter": ("nonce", 23),
                    "ciphertext": ("frames", 30), "session_pub": ("session_pub", 5),
                    "session_proof": ("session_proof", 20),
                    "proof_time": ("session_proof", 7)}[part]
    if field == "frames":
        bad = dataclasses.replace(parts, frames=(flip(parts.frames[0], index),))
    else:
        bad = dataclasses.replace(parts, **{field: flip(getattr(parts, field), index)})
    with pytest.raises(Unauthenticated):
        opener.open(alice.public_raw, bad)
    assert opener.open(alice.public_raw, parts) == b"secret payload"  # the original still opens


def test_wrong_recipient_cannot_open(sealer, alice, bob, clock):
    carol = keys.generate()
    with pytest.raises(OpenError):
        Opener(carol, clock=clock).open(alice.public_raw, sealer.seal(bob.public_raw, b"for bob"))


def test_wrong_claimed_sender_refused(sealer, opener, bob):
    mallory = keys.generate()
    with pytest.raises(OpenError):
        opener.open(mallory.public_raw, sealer.seal(bob.public_raw, b"from alice"))


def test_an_established_session_opens_only_for_its_sender(sealer, opener, alice, bob):
    # the second message of a session takes the short path: it must check the sender too
    opener.open(alice.public_raw, sealer.seal(bob.public_raw, b"first"))
    mallory = keys.generate()
    parts = sealer.seal(bob.public_raw, b"second")
    with pytest.raises(OpenError):
        opener.open(mallory.public_raw, parts)
    # the sender's key in its other form (z85) is the same sender
    assert opener.open(alice.public, parts) == b"second"
    with pytest.raises(Replayed):
        opener.open(alice.public_raw, parts)


def test_impersonation_without_the_senders_key_refused(opener, alice, bob, clock):
    mallory = keys.generate()
    forged = Sealer(mallory, clock=clock).seal(bob.public_raw, b"I am alice")
    with pytest.raises(OpenError, match="proof"):
        opener.open(alice.public_raw, forged)


def test_associated_data_mismatch_refused(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public_raw, b"x", aad=b"to acme/ml/trainer")
    with pytest.raises(OpenError):
        opener.open(alice.public_raw, parts, aad=b"to acme/ml/other")


def test_reordered_or_dropped_frames_refused(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public_raw, [b"one", b"two", b"three"])
    swapped = dataclasses.replace(parts, frames=(parts.frames[1], parts.frames[0], parts.frames[2]))
    with pytest.raises(OpenError):
        opener.open_frames(alice.public_raw, swapped)
    dropped = dataclasses.replace(parts, frames=parts.frames[:2])
    with pytest.raises(OpenError):
        opener.open_frames(alice.public_raw, dropped)
    assert opener.open_frames(alice.public_raw, parts) == [b"one", b"two", b"three"]


def test_low_order_session_key_is_an_error_not_a_crash(sealer, opener, alice, bob):
    parts = sealer.seal(bob.public_raw, b"x")
    with pytest.raises(OpenError):
        opener.open(alice.public_raw, dataclasses.replace(parts, session_pub=b"\x00" * 32))


@pytest.mark.parametrize("change", [
    {"nonce": b"short"}, {"session_pub": b"x"}, {"session_proof": b""}, {"frames": ()},
])
def test_malformed_parts_refused(sealer, opener, alice, bob, change):
    parts = dataclasses.replace(sealer.seal(bob.public_raw, b"x"), **change)
    with pytest.raises(Malformed):
        opener.open_frames(alice.public_raw, parts)


def test_evicted_session_is_unknown_until_the_sender_starts_over(bob, clock):
    opener = Opener(bob, max_sessions=2, clock=clock)
    senders = [(k, Sealer(k, clock=clock)) for k in (keys.generate() for _ in range(3))]
    kept = []
    for k, s in senders:
        parts = s.seal(bob.public_raw, b"hello")
        opener.open(k.public_raw, parts)
        kept.append(parts)
    first_key, first_sealer = senders[0]
    with pytest.raises(UnknownSession):  # its session was evicted: a replay cannot revive it
        opener.open(first_key.public_raw, kept[0])
    with pytest.raises(UnknownSession):
        opener.open(first_key.public_raw, first_sealer.seal(bob.public_raw, b"again"))
    first_sealer.forget(bob.public_raw)
    assert opener.open(first_key.public_raw, first_sealer.seal(bob.public_raw, b"new")) == b"new"


@settings(max_examples=200, deadline=None, database=None)
@given(nonce=st.binary(min_size=24, max_size=24), pub=st.binary(min_size=32, max_size=32),
       proof=st.binary(min_size=40, max_size=40), frames=st.lists(st.binary(max_size=64),
                                                                   min_size=1, max_size=3))
def test_fuzzed_parts_only_raise_typed_errors(nonce, pub, proof, frames):
    opener = Opener(keys.generate())
    with pytest.raises((Unauthenticated, Replayed, Malformed)):
        opener.open_frames(keys.generate().public_raw,
                           SealedParts(nonce, tuple(frames), pub, proof))


# ---- the replay window alone --------------------------------------------------------------

def test_window_duplicates_old_and_gaps():
    w = ReplayWindow(8)
    for c in (0, 2, 5):
        w.check_and_commit(c)
    w.check_and_commit(1)  # a gap filled late
    with pytest.raises(Replayed, match="duplicate"):
        w.check(2)
    w.check_and_commit(20)
    with pytest.raises(Replayed, match="older"):
        w.check(12)
    w.check_and_commit(13)
    with pytest.raises(Replayed):
        w.check(18, 5)  # a run that includes a seen counter (20)
    w.check(21, 100)
    with pytest.raises(Malformed):
        w.check(-1)
    with pytest.raises(Malformed):
        w.check(2**64 - 1, 2)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(0, 200), max_size=200))
def test_window_matches_a_set_model(counters):
    w, seen, top = ReplayWindow(32), set(), -1
    for c in counters:
        expect_ok = c not in seen and (c > top or top - c < 32)
        try:
            w.check_and_commit(c)
            ok = True
        except Replayed:
            ok = False
        assert ok == expect_ok
        if ok:
            seen.add(c)
            top = max(top, c)
