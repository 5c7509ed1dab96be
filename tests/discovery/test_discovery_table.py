"""RegistryTable: lookups, leases on an injected clock, ownership, and the event sequence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from discovery.events import EventKind
from discovery.records import Registration
from discovery.table import (
    DEFAULT_TTL,
    InstanceTaken,
    NotOwner,
    RegistryTable,
    TableFull,
    UnknownInstance,
)
from mesh.errors import Forbidden, NoSuchService, Overloaded

MakeReg = Callable[..., Registration]


def test_register_and_lookup_by_name_capability_label(make_reg: MakeReg) -> None:
    table = RegistryTable()
    a = make_reg(instance="a", capabilities=("train", "lstm"), labels={"zone": "a"})
    b = make_reg(instance="b", capabilities=("train",), labels={"zone": "b"})
    c = make_reg(name="acme/ml/inference", instance="c", capabilities=("predict",))
    for reg in (a, b, c):
        table.register(reg, now=0.0)
    assert table.lookup("acme/ml/trainer") == [a, b]
    assert table.lookup("acme/ml/nothing") == []
    assert table.by_capability("train") == [a, b]
    assert table.by_capability("lstm") == [a]
    assert table.by_capability("none") == []
    assert table.by_label("zone", "b") == [b]
    assert table.by_label("zone", "a") == [c, a]  # sorted by (name, instance)
    assert table.get("acme/ml/inference", "c") == c
    assert len(table) == 3
    assert sorted(r.instance for r in table.list()) == ["a", "b", "c"]


def test_default_lease_lets_a_dead_agent_go_within_five_seconds(make_reg: MakeReg) -> None:
    table = RegistryTable()
    assert DEFAULT_TTL < 5.0
    table.register(make_reg(), now=100.0)
    assert table.expire(100.0 + DEFAULT_TTL - 0.01) == []
    events = table.expire(100.0 + DEFAULT_TTL)
    assert [e.kind for e in events] == [EventKind.LEAVE]
    assert table.lookup("acme/ml/trainer") == []
    assert table.by_capability("train") == []
    assert table.by_label("zone", "a") == []


def test_heartbeat_extends_the_lease(make_reg: MakeReg, key: str) -> None:
    table = RegistryTable(ttl=3.0)
    table.register(make_reg(instance="a"), now=0.0)
    table.register(make_reg(instance="b"), now=0.0)
    for t in (1.0, 2.0, 3.0 - 1e-6, 4.0):  # a, but not b, heartbeats every second
        table.heartbeat("acme/ml/trainer", "a", now=t, key=key)
        if t < 3.0:
            assert table.expire(t) == []
    gone = table.expire(4.0)
    assert [e.record.instance for e in gone] == ["b"]
    assert [r.instance for r in table.lookup("acme/ml/trainer")] == ["a"]
    assert table.expire(6.9) == []
    assert [e.record.instance for e in table.expire(7.0)] == ["a"]


def test_heartbeat_after_expiry_or_unknown_asks_to_register(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=3.0)
    table.register(make_reg(), now=0.0)
    with pytest.raises(UnknownInstance) as info:
        table.heartbeat("acme/ml/trainer", "i1", now=3.5)
    assert isinstance(info.value, NoSuchService)
    with pytest.raises(UnknownInstance):
        table.heartbeat("acme/ml/trainer", "nope", now=1.0)


def test_clock_going_backwards_does_not_resurrect_order(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=3.0)
    table.register(make_reg(instance="a"), now=10.0)
    table.register(make_reg(instance="b"), now=5.0)  # clock stepped back: treated as 10.0
    assert table.expire(12.9) == []
    assert {e.record.instance for e in table.expire(13.0)} == {"a", "b"}


def test_same_instance_from_another_key_is_refused(make_reg: MakeReg, other_key: str) -> None:
    table = RegistryTable()
    original = make_reg()
    table.register(original, now=0.0)
    seq = table.seq
    with pytest.raises(InstanceTaken) as info:
        table.register(make_reg(public_key=other_key, capacity=99), now=1.0)
    assert isinstance(info.value, Forbidden)
    assert table.get("acme/ml/trainer", "i1") == original
    assert table.seq == seq  # nothing changed, no event
    with pytest.raises(NotOwner):
        table.heartbeat("acme/ml/trainer", "i1", now=1.0, key=other_key)
    with pytest.raises(NotOwner):
        table.deregister("acme/ml/trainer", "i1", now=1.0, key=other_key)
    assert table.get("acme/ml/trainer", "i1") == original


def test_same_key_re_registering_refreshes_idempotently(make_reg: MakeReg) -> None:
    table = RegistryTable(ttl=3.0)
    first = table.register(make_reg(), now=0.0)
    assert first is not None
    assert first.kind is EventKind.JOIN
    assert table.register(make_reg(), now=2.0) is None  # identical: refresh, no event
    assert table.seq == first.seq
    assert table.expire(4.0) == []  # lease now runs from t=2
    update = table.register(make_reg(capacity=16, capabilities=("predict",)), now=4.5)
    assert update is not None
    assert update.kind is EventKind.UPDATE
    assert update.seq == first.seq + 1
    assert table.by_capability("train") == []
    assert table.by_capability("predict") != []
    assert table.get("acme/ml/trainer", "i1").capacity == 16  # type: ignore[union-attr]


def test_deregister_emits_leave_once(make_reg: MakeReg, key: str) -> None:
    table = RegistryTable()
    table.register(make_reg(), now=0.0)
    leave = table.deregister("acme/ml/trainer", "i1", now=1.0, key=key)
    assert leave is not None
    assert leave.kind is EventKind.LEAVE
    assert table.deregister("acme/ml/trainer", "i1", now=1.0, key=key) is None
    assert table.lookup("acme/ml/trainer") == []


def test_events_are_numbered_without_gaps(make_reg: MakeReg, key: str) -> None:
    table = RegistryTable(ttl=3.0)
    events = [
        table.register(make_reg(instance="a"), now=0.0),
        table.register(make_reg(instance="b"), now=0.5),
        table.register(make_reg(instance="a", weight=5), now=1.0),
        table.deregister("acme/ml/trainer", "a", now=1.5, key=key),
        *table.expire(10.0),
    ]
    assert [e.seq for e in events if e] == [1, 2, 3, 4, 5]
    assert [e.kind for e in events if e] == [
        EventKind.JOIN, EventKind.JOIN, EventKind.UPDATE, EventKind.LEAVE, EventKind.LEAVE]
    assert table.seq == 5


def test_snapshot_and_history(make_reg: MakeReg) -> None:
    table = RegistryTable(history=2)
    table.register(make_reg(instance="a"), now=0.0)
    table.register(make_reg(instance="b"), now=0.0)
    snap = table.snapshot()
    seq, recs = snap
    assert seq == 2
    assert {r.instance for r in recs} == {"a", "b"}
    table.register(make_reg(instance="c"), now=0.0)
    assert [e.seq for e in table.events_since(2) or []] == [3]
    assert table.events_since(3) == []
    assert table.events_since(0) is None  # event 1 fell out of the 2-event history


def test_table_full_refuses_new_instances_only(make_reg: MakeReg) -> None:
    table = RegistryTable(max_records=1)
    table.register(make_reg(instance="a"), now=0.0)
    with pytest.raises(TableFull) as info:
        table.register(make_reg(instance="b"), now=0.0)
    assert isinstance(info.value, Overloaded)
    assert table.register(make_reg(instance="a", weight=2), now=0.0) is not None
    assert len(table) == 1


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        RegistryTable(ttl=0)
