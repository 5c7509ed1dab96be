"""Property tests: untrusted decoders raise only Malformed/TooLarge, whatever they are fed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.announcement import decode_txt, parse_announcement
from discovery.events import parse_event, parse_snapshot
from discovery.records import Registration, parse_registration
from mesh.errors import Malformed, TooLarge

FIELDS = ["name", "instance", "public_key", "endpoints", "capabilities", "version",
          "capacity", "weight", "labels"]

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.binary(max_size=16)
           | st.sampled_from(["x" * 300, "tcp://127.0.0.1:1", "a/b", "0" * 40]))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4),
    max_leaves=10,
)
keys = st.sampled_from(FIELDS) | st.text(max_size=10) | st.integers() | st.binary(max_size=4)
random_dicts = st.dictionaries(keys, values, max_size=12)

VALID: dict[str, Any] = {
    "name": "acme/ml/trainer", "instance": "i1",
    "public_key": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
    "endpoints": ["tcp://127.0.0.1:7000"], "capabilities": ["train"], "version": "1",
    "capacity": 1, "weight": 1, "labels": {"zone": "a"},
}
# Valid records with one field replaced: reaches the checks behind the early ones.
mutated = st.builds(lambda f, v: {**VALID, f: v}, st.sampled_from(FIELDS), values)

fuzz = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def only_typed_errors(fn: Any, obj: object) -> object:
    try:
        return fn(obj)
    except (Malformed, TooLarge):
        return None


@fuzz
@given(random_dicts | mutated | values)
def test_parse_registration_never_raises_anything_else(obj: object) -> None:
    result = only_typed_errors(parse_registration, obj)
    assert result is None or isinstance(result, Registration)
    if isinstance(result, Registration):  # what was accepted round-trips exactly
        assert parse_registration(result.to_wire()) == result


@fuzz
@given(st.fixed_dictionaries({"seq": values, "kind": values, "record": mutated | values})
       | random_dicts)
def test_parse_event_never_raises_anything_else(obj: object) -> None:
    only_typed_errors(parse_event, obj)


@fuzz
@given(st.fixed_dictionaries({"seq": values, "records": st.lists(mutated | values,
                                                                  max_size=4)}))
def test_parse_snapshot_never_raises_anything_else(obj: object) -> None:
    only_typed_errors(parse_snapshot, obj)


def txt_of(entries: list[bytes]) -> bytes:
    return b"".join(bytes((len(e),)) + e for e in entries)


txt_entries = st.lists(
    st.sampled_from([b"txtvers=1", b"role=router", b"name=acme/r", b"key=" + b"0" * 40,
                     b"ver=1", b"mesh=m", b"router=5555", b"pub=1", b"sub=99999", b"=x",
                     b"ROLE=agent", b"key", b"\xff\xfe=1"])
    | st.binary(max_size=40),
    max_size=40,
)


@fuzz
@given(st.binary(max_size=3000) | txt_entries.map(txt_of),
       st.none() | st.integers(-5, 70000))
def test_txt_decoding_never_raises_anything_else(data: bytes, port: int | None) -> None:
    try:
        decode_txt(data)
        parse_announcement("x", data, port=port, addresses=["127.0.0.1"])
    except (Malformed, TooLarge):
        pass
