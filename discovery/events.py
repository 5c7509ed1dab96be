"""Registry change events and snapshots, and their wire forms (the Clone pattern's messages).

The registry numbers every change with one increasing sequence number. A subscriber that
joins late asks for a :class:`Snapshot` (the state *at* a sequence number) and then applies
only events numbered after it; see :mod:`discovery.replica`. Both parsers take untrusted
msgpack-decoded values and raise only :class:`~mesh.errors.Malformed` or
:class:`~mesh.errors.TooLarge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, NamedTuple

from discovery.records import Registration, parse_registration
from mesh.errors import Malformed, TooLarge

MAX_SNAPSHOT_RECORDS: Final = 100_000
MAX_SEQ: Final = 2**63 - 1


class EventKind(str, Enum):
    """What happened to a record."""

    JOIN = "join"
    LEAVE = "leave"
    UPDATE = "update"


@dataclass(frozen=True, slots=True)
class Event:
    """One change to the registry; ``record`` is the new state (the old one for LEAVE)."""

    seq: int
    kind: EventKind
    record: Registration

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind.value, "record": self.record.to_wire()}


class Snapshot(NamedTuple):
    """The registry's whole state as of ``seq``: events with seq <= this are already in it."""

    seq: int
    records: tuple[Registration, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "records": [r.to_wire() for r in self.records]}


def _seq(obj: Mapping[Any, Any], where: str) -> int:
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise Malformed(f"{where}: seq must be an integer in 0..2**63-1",
                        details={"field": "seq"})
    return seq


def parse_event(obj: object) -> Event:
    """Decode an untrusted event map."""
    if not isinstance(obj, Mapping):
        raise Malformed("event: expected a map", details={"field": "event"})
    seq = _seq(obj, "event")
    if seq == 0:
        raise Malformed("event: seq starts at 1", details={"field": "seq"})
    kind_raw = obj.get("kind")
    try:
        kind = EventKind(kind_raw) if isinstance(kind_raw, str) else None
    except ValueError:
        kind = None
    if kind is None:
        raise Malformed(f"event: unknown kind {kind_raw!r:.40}", details={"field": "kind"})
    return Event(seq=seq, kind=kind, record=parse_registration(obj.get("record")))


def parse_snapshot(obj: object, *, max_records: int = MAX_SNAPSHOT_RECORDS) -> Snapshot:
    """Decode an untrusted snapshot map; more than ``max_records`` records is TooLarge."""
    if not isinstance(obj, Mapping):
        raise Malformed("snapshot: expected a map", details={"field": "snapshot"})
    seq = _seq(obj, "snapshot")
    raw = obj.get("records")
    if not isinstance(raw, (list, tuple)):
        raise Malformed("snapshot: records must be a list", details={"field": "records"})
    if len(raw) > max_records:
        raise TooLarge(f"snapshot: more than {max_records} records", details={"field": "records"})
    records = tuple(parse_registration(r) for r in raw)
    if len({r.key for r in records}) != len(records):
        raise Malformed("snapshot: duplicate (name, instance)", details={"field": "records"})
    return Snapshot(seq=seq, records=records)
