"""Payload sealing as the mesh sends it: the AEGIS-256 fast path, one or many recipients, and
the answer sealed with the request's key. Fed bytes only, no sockets."""

from __future__ import annotations

import nacl.bindings
import pytest
from nacl.exceptions import CryptoError

from mesh.errors import Malformed, Replayed, Unauthenticated
from security import aead, keys
from security.payload import DIRECT_BLOB_LEN, PayloadBoxes, open_reply, seal_reply

AAD = b"echo\0" + (7).to_bytes(8, "little")
REPLY_AAD = b"reply\0" + (7).to_bytes(8, "little")


@pytest.fixture
def client():
    return PayloadBoxes(keys.generate())


@pytest.fixture
def agents():
    return [PayloadBoxes(keys.generate()) for _ in range(3)]


def flip(data: bytes | bytearray, index: int = 0) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


# ---- security.aead: the direct call into libsodium ------------------------------------------

def test_aead_agrees_with_pynacl_both_ways():
    key, nonce = bytes(range(32)), bytes(range(32, 64))
    sealed = aead.seal(key, nonce, b"ad", b"hello")
    assert bytes(sealed) == nacl.bindings.crypto_aead_aegis256_encrypt(b"hello", b"ad", nonce, key)
    theirs = nacl.bindings.crypto_aead_aegis256_encrypt(b"world", b"", nonce, key)
    assert aead.open_(key, nonce, b"", theirs) == b"world"


@pytest.mark.parametrize("buf", [bytearray(b"abc" * 100), memoryview(b"xyz" * 100), b""])
def test_aead_takes_any_buffer(buf):
    key, nonce = b"k" * 32, b"n" * 32
    assert aead.open_(key, nonce, b"", memoryview(aead.seal(key, nonce, b"", buf))) == bytes(buf)


@pytest.mark.parametrize(("key", "nonce"), [(b"k" * 31, b"n" * 32), (b"k" * 32, b"n" * 24),
                                            (b"k" * 33, b"n" * 32)])
def test_aead_refuses_wrong_lengths_before_calling_c(key, nonce):
    with pytest.raises(ValueError, match="32-byte"):
        aead.seal(key, nonce, b"", b"x")
    with pytest.raises(ValueError, match="32-byte"):
        aead.open_(key, nonce, b"", b"x" * 64)


@pytest.mark.parametrize("change", ["short", "tag", "body", "aad", "nonce", "key"])
def test_aead_refuses_what_was_not_sealed_so(change):
    key, nonce = b"k" * 32, b"n" * 32
    sealed = bytes(aead.seal(key, nonce, b"ad", b"payload"))
    args = {"key": key, "nonce": nonce, "aad": b"ad", "sealed": sealed}
    if change == "short":
        args["sealed"] = sealed[:aead.TAG_LEN - 1]
    elif change == "tag":
        args["sealed"] = flip(sealed, len(sealed) - 1)
    elif change == "body":
        args["sealed"] = flip(sealed, 0)
    elif change == "aad":
        args["aad"] = b"ae"
    else:
        args[change] = flip(args[change])
    with pytest.raises(CryptoError):
        aead.open_(args["key"], args["nonce"], args["aad"], args["sealed"])


# ---- PayloadBoxes: one recipient sealed directly, many through a content key --------------

def test_one_recipient_roundtrip_and_replay(client, agents):
    bob = agents[0]
    blob, sealed, _ = client.seal([bob.public], [b"a", b"bb"], AAD)
    assert len(blob) == DIRECT_BLOB_LEN
    assert blob[0] == 1
    assert b"bb" not in b"".join(bytes(f) for f in sealed)
    frames, _ = bob.open(client.public, blob, sealed, AAD)
    assert frames == [b"a", b"bb"]
    with pytest.raises(Replayed):
        bob.open(client.public, blob, sealed, AAD)


def test_many_recipients_each_opens_and_an_outsider_cannot(client, agents):
    outsider = PayloadBoxes(keys.generate())
    recipients = [a.public for a in agents]
    for a in agents:
        blob, sealed, _ = client.seal(recipients, [b"one", b"two"], AAD)
        assert blob[0] == 2
        assert blob[1] == len(agents)
        assert a.open(client.public, blob, sealed, AAD)[0] == [b"one", b"two"]
    with pytest.raises(Unauthenticated, match="not sealed for this key"):
        outsider.open(client.public, blob, sealed, AAD)


@pytest.mark.parametrize("n_recipients", [1, 3])
def test_frames_reordered_dropped_or_tampered_are_refused(client, agents, n_recipients):
    recipients = [a.public for a in agents[:n_recipients]]
    for change in ("swap", "drop", "flip", "aad"):
        blob, sealed, _ = client.seal(recipients, [b"first", b"second"], AAD)
        frames, aad = [bytes(f) for f in sealed], AAD
        if change == "swap":
            frames.reverse()
        elif change == "drop":
            frames = frames[:1]
        elif change == "flip":
            frames[1] = flip(frames[1], 3)
        else:
            aad = b"other\0" + AAD[5:]
        with pytest.raises(Unauthenticated):
            agents[0].open(client.public, blob, frames, aad)


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x01" + bytes(10), b"\x02\x01" + bytes(10),
                                  b"\x02\x00", b"\x09" + bytes(DIRECT_BLOB_LEN - 1)])
def test_malformed_blobs_are_typed_errors(client, agents, blob):
    with pytest.raises(Malformed):
        agents[0].open(client.public, blob, [b"x" * 40], AAD)


def test_recipient_count_is_bounded(client):
    many = [keys.generate().public for _ in range(65)]
    with pytest.raises(Malformed, match="recipients"):
        client.seal(many, [b"x"], AAD)


# ---- the answer: sealed with the request's key --------------------------------------------

@pytest.mark.parametrize("n_recipients", [1, 3])
def test_the_answer_opens_with_the_requests_key_only(client, agents, n_recipients):
    recipients = [a.public for a in agents[:n_recipients]]
    blob, sealed, client_key = client.seal(recipients, [b"question"], AAD)
    _, agent_key = agents[0].open(client.public, blob, sealed, AAD)
    assert agent_key == client_key
    answer = seal_reply(agent_key, [b"answer", b"more"], REPLY_AAD)
    assert open_reply(client_key, answer, REPLY_AAD) == [b"answer", b"more"]
    other = client.seal(recipients, [b"question"], AAD)[2]  # another request's key
    with pytest.raises(Unauthenticated):
        open_reply(other, answer, REPLY_AAD)


def test_a_reflected_request_does_not_open_as_its_answer(client, agents):
    """The router could send the request's own ciphertext back as the reply: the answer's
    nonces and associated data differ from the request's, so it does not open."""
    blob, sealed, key = client.seal([agents[0].public], [b"question"], AAD)
    for aad in (REPLY_AAD, AAD):
        with pytest.raises(Unauthenticated):
            open_reply(key, sealed, aad)


@pytest.mark.parametrize("change", ["swap", "drop", "strip", "flip", "other_ident"])
def test_a_changed_answer_is_refused(client, agents, change):
    blob, sealed, key = client.seal([agents[0].public], [b"q"], AAD)
    answer = [bytes(f) for f in seal_reply(key, [b"a", b"b"], REPLY_AAD)]
    aad = REPLY_AAD
    if change == "swap":
        answer.reverse()
    elif change == "drop":
        answer = answer[:1]
    elif change == "strip":
        answer = []
    elif change == "flip":
        answer[0] = flip(answer[0])
    else:
        aad = b"reply\0" + (8).to_bytes(8, "little")
    with pytest.raises(Unauthenticated):
        open_reply(key, answer, aad)


def test_an_empty_answer_is_sealed_as_one_empty_frame(client, agents):
    _, _, key = client.seal([agents[0].public], [b"q"], AAD)
    answer = seal_reply(key, [], REPLY_AAD)
    assert len(answer) == 1
    assert len(answer[0]) == aead.TAG_LEN
    assert open_reply(key, answer, REPLY_AAD) == [b""]
