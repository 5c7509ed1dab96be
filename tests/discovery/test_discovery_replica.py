"""Replica (Clone pattern): snapshot + events, buffering, duplicates, gaps; event wire forms."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

from discovery.events import (
    Beat,
    Event,
    EventKind,
    Snapshot,
    parse_beat,
    parse_event,
    parse_snapshot,
)
from discovery.records import Registration
from discovery.replica import ApplyResult, Replica
from discovery.table import RegistryTable
from mesh.errors import Malformed, TooLarge

MakeReg = Callable[..., Registration]


def over_the_wire(event: Event) -> Event:
    return parse_event(msgpack.unpackb(msgpack.packb(event.to_wire())))


def beat_of(table: RegistryTable) -> Beat:
    """The beat the registry around ``table`` says now, as a watcher decodes it."""
    return parse_beat(msgpack.unpackb(msgpack.packb(Beat(table.seq, table.epoch).to_wire())))


def build(make_reg: MakeReg, n: int) -> tuple[RegistryTable, list[Event]]:
    """A table with ``n`` events: the joins of i0..i{n-1}."""
    table = RegistryTable()
    events: list[Event] = []
    for i in range(n):
        ev = table.register(make_reg(instance=f"i{i}"), now=0.0)
        assert ev is not None
        events.append(ev)
    return table, events


def state(records: list[Registration]) -> list[tuple[str, str, int]]:
    return sorted((r.name, r.instance, r.weight) for r in records)


def test_late_joiner_gets_snapshot_then_changes_without_gap_or_duplicate(
        make_reg: MakeReg, key: str) -> None:
    table = RegistryTable()
    stream: list[Event] = []

    def change(ev: Event | None) -> None:
        assert ev is not None
        stream.append(over_the_wire(ev))

    for i in range(5):
        change(table.register(make_reg(instance=f"i{i}"), now=0.0))
    replica = Replica()
    # The replica subscribes first: it hears events 4..5 (and later ones) before its snapshot.
    heard_before_snapshot = stream[3:]
    change(table.register(make_reg(instance="i1", weight=9), now=0.0))       # seq 6
    snap = parse_snapshot(msgpack.unpackb(msgpack.packb(table.snapshot().to_wire())))
    change(table.deregister("acme/ml/trainer", "i0", now=0.0, key=key))       # seq 7
    change(table.register(make_reg(instance="i9"), now=0.0))                  # seq 8

    results = [replica.apply(ev) for ev in heard_before_snapshot + stream[5:6]]
    assert results == [ApplyResult.BUFFERED] * 3
    assert not replica.has_snapshot
    assert len(replica) == 0
    replica.apply_snapshot(snap)
    assert replica.seq == 6
    assert replica.in_sync
    assert replica.duplicates == 3  # 4, 5, 6 were already in the snapshot
    assert [replica.apply(ev) for ev in stream[6:]] == [ApplyResult.APPLIED] * 2
    assert replica.apply(stream[7]) is ApplyResult.DUPLICATE
    assert replica.seq == table.seq == 8
    assert state(replica.records()) == state(table.list())
    assert replica.get("acme/ml/trainer", "i1").weight == 9  # type: ignore[union-attr]
    assert replica.get("acme/ml/trainer", "i0") is None


def test_buffered_events_after_snapshot_are_applied_in_order(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 6)
    snap = Snapshot(3, tuple(e.record for e in events[:3]))
    replica = Replica()
    for ev in reversed(events):  # arrival order does not matter for buffered events
        assert replica.apply(ev) is ApplyResult.BUFFERED
    replica.apply_snapshot(snap)
    assert replica.seq == 6
    assert replica.in_sync
    assert state(replica.records()) == state(table.list())


def test_gap_is_detected_and_filled_by_history(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 6)
    replica = Replica()
    replica.apply_snapshot(Snapshot(2, tuple(e.record for e in events[:2])))
    assert replica.apply(events[2]) is ApplyResult.APPLIED
    assert replica.apply(events[5]) is ApplyResult.GAP  # 4 and 5 were lost
    assert replica.needs_resync
    assert not replica.in_sync
    assert replica.gaps == 1
    assert replica.missing() == (4, 5)
    assert replica.seq == 3  # state stays exact as of the last good event
    for ev in table.events_since(replica.seq) or []:
        replica.apply(ev)
    assert replica.in_sync
    assert replica.seq == 6
    assert state(replica.records()) == state(table.list())


def test_gap_in_buffer_at_snapshot_time_needs_resync(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 6)
    replica = Replica()
    replica.apply(events[5])  # only event 6 was heard; 5 was lost before the snapshot
    replica.apply_snapshot(Snapshot(4, tuple(e.record for e in events[:4])))
    assert replica.needs_resync
    assert replica.missing() == (5, 5)
    replica.apply_snapshot(table.snapshot())  # a fresh snapshot heals it
    assert replica.in_sync
    assert replica.seq == 6
    assert replica.missing() is None


def test_buffer_is_bounded_and_overflow_still_surfaces_as_gap(make_reg: MakeReg) -> None:
    _table, events = build(make_reg, 5)
    replica = Replica(max_buffer=2)
    results = [replica.apply(ev) for ev in events[2:]]
    assert results == [ApplyResult.BUFFERED, ApplyResult.BUFFERED, ApplyResult.OVERFLOW]
    assert replica.overflows == 1
    replica.apply_snapshot(Snapshot(2, tuple(e.record for e in events[:2])))
    assert replica.seq == 4
    assert replica.in_sync
    later = Event(6, EventKind.JOIN, make_reg(instance="later"))
    assert replica.apply(later) is ApplyResult.GAP  # event 5 was dropped, and it shows


def test_reset_forgets_state(make_reg: MakeReg) -> None:
    table, _events = build(make_reg, 2)
    replica = Replica()
    replica.apply_snapshot(table.snapshot())
    replica.reset()
    assert not replica.has_snapshot
    assert len(replica) == 0
    assert replica.seq == 0


def test_replica_queries(make_reg: MakeReg) -> None:
    replica = Replica()
    a = make_reg(instance="a", capabilities=("x",))
    b = make_reg(name="acme/ml/other", instance="b", capabilities=("y",))
    replica.apply_snapshot(Snapshot(1, (a, b)))
    assert replica.lookup("acme/ml/trainer") == [a]
    assert replica.by_capability("y") == [b]


@pytest.mark.parametrize("obj", [
    None, [], {"seq": 1}, {"seq": 0, "kind": "join"}, {"seq": -1, "kind": "join"},
    {"seq": True, "kind": "join"}, {"seq": 1, "kind": "explode"}, {"seq": 1, "kind": 3},
    {"seq": 2**64, "kind": "join"}, {"seq": 1, "kind": "join", "record": {}},
])
def test_parse_event_rejects_malformed(obj: object) -> None:
    with pytest.raises(Malformed):
        parse_event(obj)


def test_parse_snapshot_caps_and_duplicates(make_reg: MakeReg) -> None:
    rec = make_reg().to_wire()
    assert parse_snapshot({"seq": 0, "records": []}) == Snapshot(0, ())
    with pytest.raises(TooLarge):
        parse_snapshot({"seq": 1, "records": [rec, rec]}, max_records=1)
    with pytest.raises(Malformed):
        parse_snapshot({"seq": 1, "records": [rec, rec]})
    with pytest.raises(Malformed):
        parse_snapshot({"seq": 1, "records": "nope"})


# -- beats (the registry's heartbeat) ----------------------------------------------------


def test_a_beat_of_a_new_epoch_is_a_restart_though_no_event_follows(make_reg: MakeReg
                                                                    ) -> None:
    old, _events = build(make_reg, 3)
    replica = Replica()
    replica.apply_snapshot(old.snapshot())
    new = RegistryTable()  # the registry restarted, and nobody registered with it (seq 0)
    assert replica.observe_beat(beat_of(new)) is ApplyResult.RESTARTED
    assert len(replica) == 0  # what the old registry held may be gone
    assert replica.needs_resync
    assert replica.missing() is None  # only a snapshot will do
    assert replica.restarts == 1
    assert replica.epoch == new.epoch
    assert replica.apply_snapshot(new.snapshot())
    assert replica.in_sync
    assert not replica.needs_resync


def test_a_late_beat_of_a_replaced_epoch_is_stale_and_changes_nothing(make_reg: MakeReg
                                                                      ) -> None:
    old, _events = build(make_reg, 3)
    new, _ = build(make_reg, 2)
    replica = Replica()
    replica.apply_snapshot(old.snapshot())
    replica.apply_snapshot(new.snapshot())  # the old epoch is retired
    assert replica.observe_beat(beat_of(old)) is ApplyResult.STALE
    assert replica.stale == 1
    assert replica.restarts == 0
    assert replica.epoch == new.epoch
    assert replica.in_sync
    assert state(replica.records()) == state(new.list())


def test_a_beat_past_the_replica_shows_lost_last_events_until_a_snapshot_covers_it(
        make_reg: MakeReg) -> None:
    table, events = build(make_reg, 5)
    replica = Replica()
    replica.apply_snapshot(Snapshot(3, tuple(e.record for e in events[:3]), table.epoch))
    # events 4 and 5 were the last before a quiet spell, and were lost: no event shows it
    assert replica.observe_beat(beat_of(table)) is ApplyResult.GAP
    assert replica.needs_resync
    assert not replica.in_sync
    assert replica.missing() == (4, 5)
    assert replica.gaps == 1
    assert replica.seq == 3  # the records stay as of the last good event
    assert replica.observe_beat(beat_of(table)) is ApplyResult.GAP  # still behind: again
    assert replica.gaps == 1  # ... but the same gap, counted once
    replica.apply_snapshot(Snapshot(3, tuple(e.record for e in events[:3]), table.epoch))
    assert replica.needs_resync  # a snapshot from before the beat does not cover it
    replica.apply_snapshot(table.snapshot())
    assert replica.in_sync
    assert replica.missing() is None
    assert replica.observe_beat(beat_of(table)) is ApplyResult.CURRENT
    assert state(replica.records()) == state(table.list())


def test_a_beat_gap_is_also_filled_by_the_missing_events(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 5)
    replica = Replica()
    replica.apply_snapshot(Snapshot(3, tuple(e.record for e in events[:3]), table.epoch))
    assert replica.observe_beat(beat_of(table)) is ApplyResult.GAP
    for ev in table.events_since(replica.seq) or []:
        replica.apply(ev)
    assert replica.in_sync
    assert replica.seq == 5


def test_a_beat_level_with_the_replica_changes_nothing(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 4)
    replica = Replica()
    replica.apply_snapshot(table.snapshot())
    early = Beat(2, table.epoch)  # said before events 3 and 4
    assert replica.observe_beat(beat_of(table)) is ApplyResult.CURRENT
    assert replica.observe_beat(early) is ApplyResult.CURRENT
    assert replica.in_sync
    assert (replica.seq, replica.gaps, replica.restarts, replica.stale) == (4, 0, 0, 0)
    assert state(replica.records()) == state(table.list())
    assert replica.apply(events[3]) is ApplyResult.DUPLICATE  # and events still count


def test_a_beat_behind_buffered_events_reports_the_gap_they_showed(make_reg: MakeReg
                                                                   ) -> None:
    table, events = build(make_reg, 5)
    replica = Replica()
    replica.apply_snapshot(Snapshot(2, tuple(e.record for e in events[:2]), table.epoch))
    assert replica.apply(events[4]) is ApplyResult.GAP  # 3 and 4 lost, 5 held
    assert replica.observe_beat(beat_of(table)) is ApplyResult.GAP
    assert replica.gaps == 1  # the beat told nothing the held event had not
    assert replica.missing() == (3, 4)


def test_a_beat_before_the_first_snapshot_is_noted_for_it(make_reg: MakeReg) -> None:
    table, events = build(make_reg, 3)
    replica = Replica()
    assert replica.observe_beat(beat_of(table)) is ApplyResult.BUFFERED
    assert replica.epoch == table.epoch
    assert not replica.needs_resync
    replica.apply_snapshot(Snapshot(2, tuple(e.record for e in events[:2]), table.epoch))
    assert replica.missing() == (3, 3)  # the beat said 3 exists; this snapshot is older
    replica.apply_snapshot(table.snapshot())
    assert replica.in_sync


def test_beat_round_trips_over_the_wire() -> None:
    beat = Beat(7, "0123abcd")
    assert parse_beat(msgpack.unpackb(msgpack.packb(beat.to_wire()))) == beat
    assert parse_beat({"seq": 0}) == Beat(0, "")  # a registry with no event yet


@pytest.mark.parametrize("obj", [
    None, [], "beat", {}, {"seq": -1}, {"seq": True}, {"seq": "1"}, {"seq": 2**63},
    {"seq": 1.0}, {"seq": 1, "epoch": 3}, {"seq": 1, "epoch": "not an epoch!"},
    {"seq": 1, "epoch": "x" * 33},
])
def test_parse_beat_rejects_malformed(obj: object) -> None:
    with pytest.raises(Malformed):
        parse_beat(obj)
