"""parse_registration: valid records round-trip; each bad field gets its own typed error."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from discovery import records
from discovery.records import Registration, check_endpoint, check_name, parse_registration
from mesh.errors import Malformed, TooLarge


def wire(key: str, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": "acme/ml/trainer", "instance": "trainer-1", "public_key": key,
        "endpoints": ["tcp://127.0.0.1:7000", "tcp://[::1]:7001", "tcp://host-a.lan:7002"],
        "capabilities": ["train", "predict"], "version": "1.2.3", "capacity": 8,
        "weight": 3, "labels": {"zone": "eu-1", "gpu": "true"},
    }
    obj.update(overrides)
    return obj


def test_valid_record_round_trips_through_msgpack(key: str) -> None:
    obj = msgpack.unpackb(msgpack.packb(wire(key)))
    reg = parse_registration(obj)
    assert reg.name == "acme/ml/trainer"
    assert reg.key == ("acme/ml/trainer", "trainer-1")
    assert reg.capabilities == ("train", "predict")
    assert reg.endpoints[1] == "tcp://[::1]:7001"
    assert reg.labels == {"zone": "eu-1", "gpu": "true"}
    assert parse_registration(msgpack.unpackb(msgpack.packb(reg.to_wire()))) == reg


def test_optional_fields_take_defaults(key: str) -> None:
    reg = parse_registration({"name": "svc", "instance": "a", "public_key": key})
    assert (reg.capacity, reg.weight, reg.version) == (1, 1, "0")
    assert reg.endpoints == ()
    assert reg.capabilities == ()
    assert reg.labels == {}


def test_duplicate_capabilities_are_folded(key: str) -> None:
    reg = parse_registration(wire(key, capabilities=["a", "b", "a"]))
    assert reg.capabilities == ("a", "b")


def test_unknown_fields_are_ignored(key: str) -> None:
    assert parse_registration(wire(key, future_field=[1, 2])).instance == "trainer-1"


@pytest.mark.parametrize(("field", "value"), [
    ("name", "Acme/ml"),                 # upper case
    ("name", "acme//ml"),                # empty segment
    ("name", "a/b/c/d/e"),               # 5 segments
    ("name", "acme/ml trainer"),         # space
    ("name", 42),
    ("name", ""),
    ("instance", "has space"),
    ("instance", None),
    ("public_key", "short"),
    ("public_key", "x" * 39 + "~"),      # not a Z85 character
    ("public_key", "#" * 40),            # Z85 group overflows 32 bits
    ("public_key", b"\x00" * 32),        # raw bytes instead of Z85 text
    ("endpoints", "tcp://127.0.0.1:1"),  # not a list
    ("endpoints", ["udp://127.0.0.1:1"]),
    ("endpoints", ["tcp://127.0.0.1"]),
    ("endpoints", ["tcp://127.0.0.1:0"]),
    ("endpoints", ["tcp://127.0.0.1:65536"]),
    ("endpoints", ["tcp://*:5555"]),
    ("endpoints", ["tcp://[::zz]:5555"]),
    ("endpoints", ["tcp://127.0.0.1:٥٥"]),  # non-ASCII digits
    ("capabilities", ["ok", 3]),
    ("capabilities", ["bad cap"]),
    ("version", "1.0 beta"),
    ("capacity", -1),
    ("capacity", True),
    ("capacity", 1.5),
    ("capacity", 10**9),
    ("weight", "1"),
    ("labels", ["zone", "a"]),
    ("labels", {"Zone": "a"}),
    ("labels", {"zone": 1}),
    ("labels", {"zone": "a\nb"}),
])
def test_each_malformed_field_is_named(key: str, field: str, value: object) -> None:
    with pytest.raises(Malformed) as info:
        parse_registration(wire(key, **{field: value}))
    assert not isinstance(info.value, TooLarge)
    assert info.value.details["field"] == field


@pytest.mark.parametrize("missing", ["name", "instance", "public_key"])
def test_missing_required_field(key: str, missing: str) -> None:
    obj = wire(key)
    del obj[missing]
    with pytest.raises(Malformed) as info:
        parse_registration(obj)
    assert info.value.details["field"] == missing


@pytest.mark.parametrize(("field", "value"), [
    ("name", "a" * 64),
    ("name", "/".join(["a" * 63] * 4) + "a"),
    ("instance", "i" * (records.MAX_INSTANCE_LEN + 1)),
    ("public_key", "0" * 41),
    ("endpoints", [f"tcp://127.0.0.1:{7000 + i}" for i in range(records.MAX_ENDPOINTS + 1)]),
    ("endpoints", ["tcp://" + "a" * 300 + ":1"]),
    ("capabilities", [f"c{i}" for i in range(records.MAX_CAPABILITIES + 1)]),
    ("capabilities", ["c" * (records.MAX_CAPABILITY_LEN + 1)]),
    ("version", "1" * 33),
    ("labels", {f"k{i}": "v" for i in range(records.MAX_LABELS + 1)}),
    ("labels", {"k": "v" * 256}),
    ("labels", {"k" * 64: "v"}),
])
def test_oversized_fields_are_too_large(key: str, field: str, value: object) -> None:
    with pytest.raises(TooLarge) as info:
        parse_registration(wire(key, **{field: value}))
    assert info.value.details["field"] == field


def test_not_a_map_and_too_many_fields(key: str) -> None:
    with pytest.raises(Malformed):
        parse_registration([1, 2])
    with pytest.raises(Malformed):
        parse_registration({b"name": b"x"})
    extra = {f"x{i}": i for i in range(records.MAX_FIELDS)}
    with pytest.raises(TooLarge):
        parse_registration(wire(key, **extra))


def test_name_and_endpoint_helpers_accept_good_values() -> None:
    assert check_name("org") == "org"
    assert check_name("org/ns/svc/inst_1-a") == "org/ns/svc/inst_1-a"
    assert check_endpoint("tcp://10.0.0.1:65535") == "tcp://10.0.0.1:65535"


def test_validated_checks_locally_built_records(key: str) -> None:
    with pytest.raises(Malformed):
        Registration(name="Bad Name", instance="a", public_key=key).validated()
