"""Registry change events and snapshots, and their wire forms (the Clone pattern's messages).

The registry numbers every change with one increasing sequence number. A subscriber that
joins late asks for a :class:`Snapshot` (the state *at* a sequence number) and then applies
only events numbered after it; see :mod:`discovery.replica`. Numbers start again at 1 when
the registry restarts, so both also carry the registry's *epoch* (a random id per start):
numbers compare only within one epoch. A snapshot travels as pages (see
:mod:`discovery.snapshots`), each under the mesh's message size limit; a page that says more
follow carries a ``next`` cursor. Between changes the registry says a :class:`Beat` (its
current seq and epoch) every second, so a subscriber learns of a restart or of lost last
events even when nothing changes after them. The parsers take untrusted msgpack-decoded
values and raise only :class:`~mesh.errors.Malformed` or :class:`~mesh.errors.TooLarge`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from discovery.records import Registration, parse_registration
from mesh.errors import Malformed, TooLarge

MAX_SNAPSHOT_RECORDS: Final = 100_000
MAX_SEQ: Final = 2**63 - 1
MAX_CURSOR_LEN: Final = 64
_EPOCH_RE: Final = re.compile(r"[A-Za-z0-9_-]{0,32}")
_CURSOR_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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
    epoch: str = ""  # the registry start that numbered it ("" from a registry without epochs)

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind.value, "record": self.record.to_wire(),
                "epoch": self.epoch}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The registry's whole state as of ``seq``: events with seq <= this are already in it.

    Unpacks as ``seq, records`` (it was a 2-tuple before it carried its epoch).
    """

    seq: int
    records: tuple[Registration, ...]
    epoch: str = ""  # "" from a registry without epochs: then it matches any

    def __iter__(self) -> Iterator[Any]:
        return iter((self.seq, self.records))

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "epoch": self.epoch,
                "records": [r.to_wire() for r in self.records]}


@dataclass(frozen=True, slots=True)
class Beat:
    """The registry's heartbeat: every event up to ``seq`` of ``epoch`` has been published.

    A subscriber only learns from events when one arrives; a beat tells it, while nothing
    changes, that the registry restarted (a new epoch) or that events it never got exist (a
    seq past its own). The Clone pattern's HUGZ, carrying the state's position.
    """

    seq: int
    epoch: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "epoch": self.epoch}


def _seq(obj: Mapping[Any, Any], where: str) -> int:
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise Malformed(f"{where}: seq must be an integer in 0..2**63-1",
                        details={"field": "seq"})
    return seq


def _epoch(obj: Mapping[Any, Any], where: str) -> str:
    epoch = obj.get("epoch", "")
    if not isinstance(epoch, str) or not _EPOCH_RE.fullmatch(epoch):
        raise Malformed(f"{where}: epoch must be 0..32 of [A-Za-z0-9_-]",
                        details={"field": "epoch"})
    return epoch


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
    return Event(seq=seq, kind=kind, record=parse_registration(obj.get("record")),
                 epoch=_epoch(obj, "event"))


def parse_beat(obj: object) -> Beat:
    """Decode an untrusted beat map (seq 0: a registry that has numbered no event yet)."""
    if not isinstance(obj, Mapping):
        raise Malformed("beat: expected a map", details={"field": "beat"})
    return Beat(seq=_seq(obj, "beat"), epoch=_epoch(obj, "beat"))


def parse_snapshot(obj: object, *, max_records: int = MAX_SNAPSHOT_RECORDS) -> Snapshot:
    """Decode an untrusted snapshot map that is whole (one page, no ``next``); more than
    ``max_records`` records is TooLarge. A first page of several is refused: fetch them all
    with :func:`discovery.snapshots.fetch_snapshot`, never mistake one page for the table."""
    snapshot, cursor = parse_snapshot_page(obj, max_records=max_records)
    if cursor is not None:
        raise TooLarge("snapshot: more pages follow; fetch them with "
                       "discovery.snapshots.fetch_snapshot", details={"field": "next"})
    return snapshot


def parse_cursor(value: object) -> str:
    """Check an untrusted page cursor (an opaque token the registry handed out)."""
    if not isinstance(value, str) or not _CURSOR_RE.fullmatch(value):
        raise Malformed(f"cursor must be 1..{MAX_CURSOR_LEN} of [A-Za-z0-9_.-]",
                        details={"field": "cursor"})
    return value


def parse_snapshot_page(obj: object, *, max_records: int = MAX_SNAPSHOT_RECORDS
                        ) -> tuple[Snapshot, str | None]:
    """Decode one untrusted snapshot page: its records (as of its seq and epoch) and the
    cursor of the next page, None on the last."""
    if not isinstance(obj, Mapping):
        raise Malformed("snapshot: expected a map", details={"field": "snapshot"})
    seq = _seq(obj, "snapshot")
    epoch = _epoch(obj, "snapshot")
    cursor = obj.get("next")
    if cursor is not None:
        cursor = parse_cursor(cursor)
    raw = obj.get("records")
    if not isinstance(raw, (list, tuple)):
        raise Malformed("snapshot: records must be a list", details={"field": "records"})
    if len(raw) > max_records:
        raise TooLarge(f"snapshot: more than {max_records} records", details={"field": "records"})
    records = tuple(parse_registration(r) for r in raw)
    if len({r.key for r in records}) != len(records):
        raise Malformed("snapshot: duplicate (name, instance)", details={"field": "records"})
    return Snapshot(seq=seq, records=records, epoch=epoch), cursor
