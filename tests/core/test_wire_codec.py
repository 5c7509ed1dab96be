"""The framing and payload codec, fed bytes: no sockets."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import codec, wire
from mesh.errors import ErrorCode, Malformed, TooLarge, VersionMismatch
from proto import agp_pb2


def test_route_frame_round_trip() -> None:
    frame = wire.pack_route(wire.Cmd.REQUEST, wire.Flag.IDEMPOTENT, 0, 5000, 2**63)
    assert len(frame) == 16
    r = wire.parse_route(frame)
    assert (r.cmd, r.flags, r.value, r.ident) == (wire.Cmd.REQUEST, 1, 5000, 2**63)


@pytest.mark.parametrize("frame", [b"", b"\x01", b"\x01" * 15, b"\x01" * 17])
def test_route_frame_of_wrong_size_is_malformed(frame: bytes) -> None:
    with pytest.raises(Malformed):
        wire.parse_route(frame)


def test_route_frame_version_and_command_checked() -> None:
    with pytest.raises(VersionMismatch):
        wire.parse_route(b"\x02" + wire.pack_route(wire.Cmd.REQUEST)[1:])
    with pytest.raises(Malformed, match="unknown command"):
        wire.parse_route(b"\x01\xff" + b"\x00" * 14)


def test_error_codes_match_the_proto_enum() -> None:
    proto_codes = {v.name: v.number for v in agp_pb2.ErrorCode.DESCRIPTOR.values}
    assert proto_codes == {c.name: int(c) for c in ErrorCode}


def test_check_sizes_caps_total_and_frame_count() -> None:
    assert wire.check_sizes([b"a" * 10, b"b" * 5], 100) == 15
    with pytest.raises(TooLarge):
        wire.check_sizes([b"a" * 60, b"b" * 60], 100)
    with pytest.raises(TooLarge):
        wire.check_sizes([b""] * (wire.MAX_FRAMES + 1), 10**9)


def test_error_frames_parse_back() -> None:
    frames = wire.error_frames(ErrorCode.OVERLOADED, "busy", 7, b"svc")
    route = wire.parse_route(frames[0])
    code, message, _ = wire.parse_error(route, frames)
    assert (route.ident, code, message, frames[1]) == (7, ErrorCode.OVERLOADED, "busy", b"svc")


def test_codec_round_trip_with_arrays_as_their_own_frames() -> None:
    obj = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": [1, "two", b"3"],
           "z": np.zeros((0, 2)), "n": None}
    frames = codec.encode(obj)
    assert len(frames) == 3  # msgpack + two array buffers
    assert isinstance(frames[1], memoryview)  # zero-copy view, not a copy
    out = codec.decode([bytes(f) for f in frames])
    np.testing.assert_array_equal(out["x"], obj["x"])
    assert out["x"].dtype == np.float32
    assert out["z"].shape == (0, 2)
    assert out["y"] == [1, "two", b"3"]
    assert out["n"] is None


def test_codec_refuses_object_arrays_and_unknown_types() -> None:
    with pytest.raises(TypeError):
        codec.encode(np.array([object()], dtype=object))
    with pytest.raises(TypeError):
        codec.encode({"f": lambda: 1})


def _array_ref(dtype: str, shape: list[int], index: int) -> bytes:
    return msgpack.packb(msgpack.ExtType(1, msgpack.packb((dtype, shape, index))))


@pytest.mark.parametrize(
    ("head", "extra", "why"),
    [
        (_array_ref("<f8", [4], 1), [b"x" * 31], "size mismatch"),
        (_array_ref("<f8", [4], 2), [b"x" * 32], "missing frame"),
        (_array_ref("|O", [1], 1), [b"x" * 8], "object dtype"),
        (_array_ref("<f8", [-1], 1), [b""], "negative dim"),
        (msgpack.packb(msgpack.ExtType(9, b"")), [], "unknown ext"),
        (b"\xc1", [], "reserved byte"),
        (b"\x92\x01", [], "truncated"),
    ],
)
def test_codec_decode_refuses_bad_input(head: bytes, extra: list[bytes], why: str) -> None:
    with pytest.raises(Malformed):
        codec.decode([head, *extra])


def test_codec_decode_caps_size() -> None:
    with pytest.raises(TooLarge):
        codec.decode([msgpack.packb(b"x" * 2000)], max_bytes=1000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_codec_decode_of_random_bytes_never_crashes(frames: list[bytes]) -> None:
    try:
        codec.decode(frames)
    except (Malformed, TooLarge):
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=5),
    max_leaves=20))
def test_codec_round_trips_msgpack_values(value: object) -> None:
    assert codec.decode([bytes(f) for f in codec.encode(value)]) == value


@settings(max_examples=200, deadline=None)
@given(action=st.text(max_size=40), key=st.binary(max_size=60), blob=st.binary(max_size=127),
       early=st.binary(max_size=20))
def test_split_nonce_reads_what_a_whole_parse_reads(action: str, key: bytes, blob: bytes,
                                                    early: bytes) -> None:
    """However the envelope before it looks (even carrying a nonce of its own), the
    envelope and nonce read from the split are those of parsing the header whole."""
    env = agp_pb2.Envelope(action=action, sender_key=key, nonce=early).SerializeToString()
    header = wire.with_nonce(env, blob)
    prefix, nonce = wire.split_nonce(header, len(blob))
    whole = agp_pb2.Envelope.FromString(header)
    assert nonce == whole.nonce == blob
    part = agp_pb2.Envelope.FromString(prefix)
    assert (part.action, part.sender_key) == (whole.action, whole.sender_key)


def test_split_nonce_declines_a_header_of_another_shape() -> None:
    assert wire.split_nonce(b"", 105) is None
    plain = agp_pb2.Envelope(action="echo").SerializeToString()
    assert wire.split_nonce(plain, 105) is None
    assert wire.split_nonce(wire.with_nonce(plain, bytes(104)), 105) is None
    assert wire.split_nonce(wire.with_nonce(plain, bytes(200)), 200) is None  # 2-byte length
