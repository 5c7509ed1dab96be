"""Encode step outputs for the run store: msgpack inline when small, artifacts when large.

A step's output is walked once: dicts, lists, scalars, bytes and numpy arrays are allowed
(never pickle, never JSON for data). An array or a bytes value of ``threshold`` bytes or more
goes to the :class:`ArtifactStore` and only its reference is packed; if the packed document
is still over the threshold, the whole document becomes one artifact. So what the run store
holds inline is always small, and a 100 MB array is written once, as its raw buffer.

Every artifact the output points at is in :attr:`Encoded.refs` (the step's ``output_refs``,
which ``agp workflow prune`` counts as in use): those it wrote, and the references the step
returned as they were (a dependency's, another run's). A returned reference must name a blob
of ``artifacts`` (else :class:`OutputError`); it is touched as a ``put`` of equal content is,
so a prune running meanwhile keeps it for the commit about to name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np

from mesh.errors import Error
from mesh.workflow.artifacts import (
    ArtifactError,
    ArtifactRef,
    ArtifactStore,
    c_order,
    check_array,
    parse_array_content_type,
)

INLINE_THRESHOLD: Final = 256 * 1024
MAX_DEPTH: Final = 64
DOCUMENT_TYPE: Final = "application/x-msgpack"
EXT_ARRAY: Final = 1  # small array inline: [dtype, shape, raw bytes]
EXT_STORED: Final = 2  # stored here by size: resolved back to the value on decode
EXT_REF: Final = 3  # an ArtifactRef the step itself returned: stays a reference


class OutputError(Error, TypeError):
    """A step output holds a type that cannot be stored without pickle."""


@dataclass(frozen=True)
class Encoded:
    """The inline blob for the run store and the artifacts it points at."""

    blob: bytes
    refs: tuple[ArtifactRef, ...]


def encode_output(value: Any, artifacts: ArtifactStore, *,
                  threshold: int = INLINE_THRESHOLD) -> Encoded:
    """Pack ``value``; large parts are written to ``artifacts`` first (fsynced)."""
    refs: dict[str, ArtifactRef] = {}  # by URI: each once, however often it appears
    prepared = _Walker(artifacts, threshold, refs).prepare(value, 0)
    try:
        blob = msgpack.packb(prepared, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise OutputError(f"cannot pack the step output: {exc}")
    if len(blob) >= threshold:
        whole = artifacts.put(blob, content_type=DOCUMENT_TYPE)
        refs[whole.uri] = whole
        blob = msgpack.packb(msgpack.ExtType(EXT_STORED, _pack_ref(whole)), use_bin_type=True)
    return Encoded(blob=blob, refs=tuple(refs.values()))


def decode_output(blob: bytes, artifacts: ArtifactStore, *, resolve: bool = True) -> Any:
    """Unpack a stored output. With ``resolve`` large parts are loaded back (arrays read-only);
    without it they stay :class:`ArtifactRef` values for a consumer that fetches them itself.
    """
    return _unpack(blob, artifacts, resolve=resolve, nested=False)


def _unpack(blob: bytes, artifacts: ArtifactStore, *, resolve: bool, nested: bool) -> Any:
    def hook(code: int, data: bytes) -> Any:
        if code == EXT_ARRAY:
            return _inline_array(data)
        if code == EXT_REF:
            return _unpack_ref(data)
        if code != EXT_STORED:
            raise ArtifactError(f"unknown extension type {code} in a stored output")
        ref = _unpack_ref(data)
        if ref.content_type == DOCUMENT_TYPE:
            if nested:
                raise ArtifactError("a stored document may not point at another document")
            return _unpack(bytes(artifacts.read(ref)), artifacts, resolve=resolve, nested=True)
        if not resolve:
            return ref
        if ref.is_array:
            return artifacts.load_array(ref)
        return bytes(artifacts.read(ref))

    return msgpack.unpackb(blob, ext_hook=hook, raw=False, strict_map_key=False)


class _Walker:
    """Turns an output into msgpack-ready values, spilling large parts to artifacts."""

    def __init__(self, artifacts: ArtifactStore, threshold: int,
                 refs: dict[str, ArtifactRef]) -> None:
        self.artifacts = artifacts
        self.threshold = threshold
        self.refs = refs

    def prepare(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise OutputError(f"the step output nests deeper than {MAX_DEPTH} levels")
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            if memoryview(value).nbytes >= self.threshold:
                return self._stored(self.artifacts.put(value))
            return bytes(value)
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return value.item()
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, ArtifactRef):
            return self._passed(value)
        if isinstance(value, Mapping):
            out = {}
            for key, val in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise OutputError(f"output keys must be str or int, got {type(key).__name__}")
                out[key] = self.prepare(val, depth + 1)
            return out
        if isinstance(value, (list, tuple)):
            return [self.prepare(v, depth + 1) for v in value]
        raise OutputError(
            f"cannot store a step output of type {type(value).__name__}: use dict, list, str, "
            "numbers, bytes, numpy arrays or ArtifactRef"
        )

    def _array(self, array: np.ndarray) -> Any:
        try:
            check_array(array)
        except ArtifactError as exc:
            raise OutputError(str(exc))
        if array.nbytes >= self.threshold:
            return self._stored(self.artifacts.put_array(array))
        array = c_order(array)
        inner = msgpack.packb([array.dtype.str, list(array.shape), array.tobytes()],
                              use_bin_type=True)
        return msgpack.ExtType(EXT_ARRAY, inner)

    def _stored(self, ref: ArtifactRef) -> msgpack.ExtType:
        self.refs[ref.uri] = ref
        return msgpack.ExtType(EXT_STORED, _pack_ref(ref))

    def _passed(self, ref: ArtifactRef) -> msgpack.ExtType:
        """A reference the step returned: recorded like one written here, once checked."""
        if self.refs.get(ref.uri) != ref:  # a forged size under a known URI is checked too
            _retain(self.artifacts, ref)
            self.refs[ref.uri] = ref
        return msgpack.ExtType(EXT_REF, _pack_ref(ref))


def _retain(artifacts: ArtifactStore, ref: ArtifactRef) -> None:
    """Check a returned reference names a whole blob here (kept from a prune meanwhile)."""
    try:
        size = artifacts.retain(ref)
    except (ArtifactError, FileNotFoundError) as exc:
        raise OutputError(f"the step returned a bad artifact reference: {exc}")
    if size != ref.size:
        raise OutputError(f"the step returned artifact {ref.uri} with size {ref.size}, "
                          f"but it holds {size} bytes")


def _inline_array(data: bytes) -> np.ndarray:
    dtype_str, shape, raw = msgpack.unpackb(data, raw=False)
    shape_text = ",".join(str(d) for d in shape)
    dtype, dims = parse_array_content_type(
        f"application/x-numpy; dtype={dtype_str}; shape={shape_text}"
    )
    if int(np.prod(dims, dtype=np.int64)) * dtype.itemsize != len(raw):
        raise ArtifactError("an inline array's size does not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _pack_ref(ref: ArtifactRef) -> bytes:
    packed: bytes = msgpack.packb([ref.uri, ref.sha256, ref.size, ref.content_type],
                                  use_bin_type=True)
    return packed


def _unpack_ref(data: bytes) -> ArtifactRef:
    uri, sha, size, content_type = msgpack.unpackb(data, raw=False)
    return ArtifactRef(uri=uri, sha256=sha, size=size, content_type=content_type)
