"""Artifacts and the output codec: content addressing, atomic writes, no pickle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from mesh.workflow import (
    ArtifactError,
    ArtifactRef,
    ArtifactStore,
    OutputError,
    decode_output,
    encode_output,
)
from mesh.workflow.artifacts import URI_PREFIX


def test_put_is_content_addressed_and_deduplicated(artifacts: ArtifactStore) -> None:
    data = b"model bytes " * 1000
    ref = artifacts.put(data, content_type="application/x-onnx")
    sha = hashlib.sha256(data).hexdigest()
    assert ref == ArtifactRef(URI_PREFIX + sha, sha, len(data), "application/x-onnx")
    assert artifacts.path(ref) == artifacts.root / sha[:2] / sha
    assert artifacts.read(ref, verify=True) == data
    again = artifacts.put(bytearray(data), content_type="application/x-onnx")
    assert again == ref
    assert sum(1 for p in artifacts.root.rglob("*") if p.is_file()) == 1  # no temp left


def test_corruption_and_missing_blobs_are_detected(artifacts: ArtifactStore) -> None:
    ref = artifacts.put(b"abc" * 100)
    assert artifacts.verify(ref)
    artifacts.path(ref).write_bytes(b"abd" * 100)
    assert not artifacts.verify(ref)
    with pytest.raises(ArtifactError, match="corrupt"):
        artifacts.read(ref, verify=True)
    artifacts.delete(ref)
    assert not artifacts.exists(ref)
    with pytest.raises(ArtifactError, match="missing"):
        artifacts.read(ref)


def test_malformed_refs_never_escape_the_root(artifacts: ArtifactStore) -> None:
    evil = ArtifactRef("artifact://sha256/../../etc/passwd", "../../etc/passwd", 10)
    with pytest.raises(ArtifactError, match="malformed"):
        artifacts.path(evil)


def test_arrays_round_trip_as_raw_buffers(artifacts: ArtifactStore) -> None:
    for arr in (np.arange(12, dtype=">i4").reshape(3, 4), np.zeros((0, 3)),
                np.asfortranarray(np.random.default_rng(1).random((5, 7))),
                np.array(["a", "bcd"]), np.array(3.5)):
        ref = artifacts.put_array(arr)
        back = artifacts.load_array(ref, verify=True)
        assert back.dtype == arr.dtype
        assert back.shape == arr.shape
        assert np.array_equal(back, arr)
        assert not back.flags.writeable
        assert ref.size == arr.nbytes


def test_object_arrays_are_refused(artifacts: ArtifactStore) -> None:
    with pytest.raises(ArtifactError, match="dtype object"):
        artifacts.put_array(np.array([{"a": 1}], dtype=object))
    with pytest.raises(OutputError, match="dtype object"):
        encode_output({"x": np.array([None], dtype=object)}, artifacts)


def test_small_outputs_are_inline_msgpack(artifacts: ArtifactStore) -> None:
    value = {"accuracy": 0.97, "labels": ("a", "b"), "n": np.int64(7), 3: None,
             "weights": np.arange(6, dtype=np.float32).reshape(2, 3), "raw": b"\x00\x01"}
    enc = encode_output(value, artifacts)
    assert enc.refs == ()
    assert len(enc.blob) < 1000
    back = decode_output(enc.blob, artifacts)
    assert back["accuracy"] == 0.97
    assert back["labels"] == ["a", "b"]
    assert back["n"] == 7
    assert back[3] is None
    assert back["raw"] == b"\x00\x01"
    assert np.array_equal(back["weights"], value["weights"])
    assert back["weights"].dtype == np.float32
    assert not any(p.is_file() for p in artifacts.root.rglob("*"))


def test_large_parts_go_by_reference(artifacts: ArtifactStore) -> None:
    big = np.random.default_rng(0).random(100_000)  # 800 kB
    blob = bytes(range(256)) * 2000  # 512 kB
    enc = encode_output({"x": big, "model": blob, "note": "ok"}, artifacts, threshold=64 * 1024)
    assert len(enc.blob) < 1024
    assert {r.content_type.split(";")[0] for r in enc.refs} == {
        "application/x-numpy", "application/octet-stream"}
    back = decode_output(enc.blob, artifacts)
    assert np.array_equal(back["x"], big)
    assert back["model"] == blob
    assert back["note"] == "ok"
    lazy = decode_output(enc.blob, artifacts, resolve=False)
    assert isinstance(lazy["x"], ArtifactRef)
    assert lazy["x"].is_array
    assert np.array_equal(artifacts.load_array(lazy["x"]), big)


def test_a_large_document_spills_whole(artifacts: ArtifactStore) -> None:
    value = {"rows": [{"id": i, "name": f"row-{i}"} for i in range(5000)]}
    enc = encode_output(value, artifacts, threshold=16 * 1024)
    assert len(enc.blob) < 1024
    assert [r.content_type for r in enc.refs] == ["application/x-msgpack"]
    assert decode_output(enc.blob, artifacts) == value


def test_step_returned_refs_stay_refs(artifacts: ArtifactStore) -> None:
    ref = artifacts.put(b"weights")
    enc = encode_output({"model": ref}, artifacts)
    assert decode_output(enc.blob, artifacts) == {"model": ref}


@pytest.mark.parametrize("value", [{1, 2}, object(), {"k": Path("/x")}, {(1, 2): "tuple key"}])
def test_unsupported_types_are_refused_not_pickled(artifacts: ArtifactStore,
                                                   value: object) -> None:
    with pytest.raises(OutputError):
        encode_output(value, artifacts)


def test_too_deep_outputs_are_refused(artifacts: ArtifactStore) -> None:
    value: list[object] = []
    for _ in range(100):
        value = [value]
    with pytest.raises(OutputError, match="deeper"):
        encode_output(value, artifacts)


def test_a_forged_array_header_is_refused(artifacts: ArtifactStore) -> None:
    inner = msgpack.packb(["|O", [1], b"\x00" * 8], use_bin_type=True)
    blob = msgpack.packb(msgpack.ExtType(1, inner), use_bin_type=True)
    with pytest.raises(ArtifactError, match="refusing"):
        decode_output(blob, artifacts)
    short = msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [4], b"\x00" * 8])))
    with pytest.raises(ArtifactError, match="does not match"):
        decode_output(short, artifacts)
