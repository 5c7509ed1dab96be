"""Payload codec: msgpack for structure, numpy arrays as their own zero-copy frames.

``encode(obj)`` returns a list of frames: frame 0 is msgpack; every ndarray inside ``obj`` is
replaced by an ext reference (type 1: dtype, shape, index) and its buffer becomes a frame of
its own, sent without copying. ``decode(frames)`` reverses it over untrusted bytes with a cap
on every length, an allow-list of dtypes (never ``object``), and a check that each buffer is
exactly ``prod(shape) * itemsize`` bytes. No pickle, no JSON, no base64.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
import numpy as np

from mesh.errors import Malformed, TooLarge

ARRAY_EXT: Final = 1
MAX_ARRAYS: Final = 256
MAX_DIMS: Final = 32
MAX_STRUCT_BYTES: Final = 64 * 1024 * 1024
MAX_CONTAINER_LEN: Final = 1_000_000
_ALLOWED_KINDS: Final = frozenset("biufcM")  # bool, int, uint, float, complex, datetime64
_DECODE_ERRORS: Final = (
    ValueError,
    TypeError,
    msgpack.ExtraData,
    msgpack.FormatError,
    msgpack.StackError,
    msgpack.OutOfData,
    IndexError,
    KeyError,
    OverflowError,
)

Frames = list[Any]  # bytes, memoryview or zmq.Frame: anything with the buffer protocol


def encode(obj: Any) -> Frames:
    """Encode ``obj``; arrays become extra frames (views of their buffers, not copies)."""
    arrays: list[Any] = []

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            if o.dtype.kind not in _ALLOWED_KINDS:
                raise TypeError(f"arrays of dtype {o.dtype} cannot travel (numeric dtypes only)")
            if len(arrays) >= MAX_ARRAYS:
                raise TooLarge(f"more than {MAX_ARRAYS} arrays in one message")
            a = np.ascontiguousarray(o)
            arrays.append(memoryview(a).cast("B") if a.size else b"")
            meta = msgpack.packb((a.dtype.str, list(a.shape), len(arrays)))
            return msgpack.ExtType(ARRAY_EXT, meta)
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        raise TypeError(f"cannot encode {type(o).__name__} (msgpack types and numpy arrays only)")

    head = msgpack.packb(obj, default=default, use_bin_type=True)
    return [head, *arrays]


def encode_one(obj: Any) -> bytes:
    """Encode an object that holds no arrays into one frame (pub/sub batches use it)."""
    if type(obj) is bytes:
        return msgpack.packb(obj)
    frames = encode(obj)
    if len(frames) != 1:
        raise TypeError("encode_one: arrays need their own frames; publish them unbatched")
    return frames[0]


def decode(frames: Frames, max_bytes: int = MAX_STRUCT_BYTES) -> Any:
    """Decode frames from an untrusted peer; raise Malformed or TooLarge, never crash."""
    if not frames:
        raise Malformed("no payload frame")
    head = frames[0]
    if len(head) > max_bytes:
        raise TooLarge(f"payload of {len(head)} bytes, the limit is {max_bytes}")
    extra = frames[1:]

    def ext_hook(code: int, data: bytes) -> Any:
        if code != ARRAY_EXT:
            raise ValueError(f"unknown ext type {code}")
        dtype_str, shape, index = msgpack.unpackb(data, max_array_len=MAX_DIMS + 1)
        if not isinstance(dtype_str, str) or len(dtype_str) > 16:
            raise ValueError("bad dtype")
        dtype = np.dtype(dtype_str)
        if dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"dtype {dtype} not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise ValueError("bad shape")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError("bad shape")
        if type(index) is not int or not 1 <= index <= len(extra):
            raise ValueError(f"array frame {index} missing")
        buf = extra[index - 1]
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != len(buf):
            raise ValueError(f"array frame of {len(buf)} bytes does not match {dtype}{shape}")
        if count == 0:
            return np.empty(shape, dtype=dtype)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    try:
        return msgpack.unpackb(
            head,
            ext_hook=ext_hook,
            raw=False,
            strict_map_key=False,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=1024,
        )
    except RecursionError:
        raise Malformed("payload nested too deep")
    except _DECODE_ERRORS as exc:
        raise Malformed(f"undecodable payload: {exc}")


def decode_one(frame: Any) -> Any:
    """Decode a single-frame message (pub/sub batch member)."""
    return decode([frame])
