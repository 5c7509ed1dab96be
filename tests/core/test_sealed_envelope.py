"""How an agent reads a sealed request's header (``Calls._sealed_envelope``): fed bytes, no
network. Whatever the shape, it reads what parsing the header whole reads."""

from __future__ import annotations

from agents.echo import Echo
from mesh.wire import with_nonce
from proto import agp_pb2
from security.payload import DIRECT_BLOB_LEN


def _agent() -> Echo:
    return Echo(endpoint="tcp://127.0.0.1:9", namespace="test/ns")


def test_the_envelope_before_the_blob_is_parsed_once() -> None:
    agent = _agent()
    prefix = agp_pb2.Envelope(action="echo", sender_key=b"k" * 40).SerializeToString()
    blobs = [bytes([i]) * DIRECT_BLOB_LEN for i in range(3)]
    seen = [agent._sealed_envelope(with_nonce(prefix, b)) for b in blobs]
    assert [blob for _, blob in seen] == blobs
    assert seen[0][0] is seen[1][0] is seen[2][0]  # one parse, cached
    assert (seen[0][0].action, seen[0][0].sender_key) == ("echo", b"k" * 40)


def test_a_header_that_only_looks_split_is_read_whole() -> None:
    """Bytes that look like a trailing blob field but sit inside another field: the cut
    falls mid-field, so the header is parsed whole and its real (empty) nonce is read."""
    agent = _agent()
    tricky = b"\x4a" + bytes([DIRECT_BLOB_LEN]) + bytes(DIRECT_BLOB_LEN)
    header = agp_pb2.Envelope(action="echo", sender_key=tricky).SerializeToString()
    env, blob = agent._sealed_envelope(header)
    whole = agp_pb2.Envelope.FromString(header)
    assert blob == whole.nonce == b""
    assert env.sender_key == tricky


def test_a_header_of_another_shape_is_parsed_whole() -> None:
    agent = _agent()
    header = agp_pb2.Envelope(action="echo", sender_key=b"k", nonce=b"n" * 300
                              ).SerializeToString()  # a wrapped (many-recipient) blob
    env, blob = agent._sealed_envelope(header)
    assert blob == b"n" * 300
    assert env.action == "echo"
