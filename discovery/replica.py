"""A subscriber's copy of the registry, kept exact with a snapshot plus numbered events.

This is the ZeroMQ Guide's Clone pattern, client side. The subscriber subscribes to the
event stream *first*, then asks for a snapshot; events that arrive before the snapshot are
buffered. When the snapshot (state as of seq S) lands, buffered events with seq <= S are
dropped (already in it) and the rest are applied in order, so nothing is missed or applied
twice. Afterwards, an event whose seq is not the next one means events were lost (a slow
subscriber, a PUB high-water mark): the replica keeps its state as of the last good seq,
buffers what came after, and reports a gap. The caller then either fetches the missing
events (:meth:`RegistryTable.events_since`, fed back through :meth:`Replica.apply`) or a
fresh snapshot. Sans-IO: values in, values out.

Registry restarts: sequence numbers start again at 1 with every registry start, so they
compare only within one *epoch* (a random id the registry draws when it starts, carried by
every event and snapshot). An event of a new epoch means the registry restarted: numbers from
before mean nothing, and records the old registry held may be gone. The replica then forgets
its records, holds the new epoch's events, and reports :attr:`ApplyResult.RESTARTED` (and
:attr:`Replica.needs_resync`) until a snapshot of the new epoch arrives. Late events of an
epoch already replaced are dropped (:attr:`ApplyResult.STALE`), never taken for a restart.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

from discovery.events import Event, EventKind, Snapshot
from discovery.records import Registration

DEFAULT_MAX_BUFFER: Final = 10_000
MAX_RETIRED_EPOCHS: Final = 16


class ApplyResult(Enum):
    APPLIED = "applied"
    """Applied, together with any buffered events it made consecutive."""
    DUPLICATE = "duplicate"
    """Already reflected (seq <= the replica's seq); dropped."""
    BUFFERED = "buffered"
    """Held until a snapshot arrives (no snapshot yet)."""
    GAP = "gap"
    """Events are missing before this one; held. See :attr:`Replica.needs_resync`."""
    OVERFLOW = "overflow"
    """The buffer is full; dropped. The gap it leaves will be detected and reported."""
    RESTARTED = "restarted"
    """From a new epoch: the registry restarted. Records forgotten, event held; take a
    snapshot (see :attr:`Replica.needs_resync`)."""
    STALE = "stale"
    """From an epoch already replaced by a newer one (a late event of a dead registry)."""


class Replica:
    """Records by (name, instance), as of :attr:`seq`."""

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.max_buffer = max_buffer
        self._records: dict[tuple[str, str], Registration] = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer: dict[int, Event] = {}
        self._epoch = ""  # of the snapshot or newest event; "" before any (or none said)
        self._retired: deque[str] = deque(maxlen=MAX_RETIRED_EPOCHS)
        self._restarted = False
        self.duplicates = 0
        self.gaps = 0
        self.overflows = 0
        self.restarts = 0
        self.stale = 0

    @property
    def seq(self) -> int:
        """The last sequence number reflected in the records (0 before any snapshot)."""
        return self._seq

    @property
    def has_snapshot(self) -> bool:
        return self._has_snapshot

    @property
    def epoch(self) -> str:
        """The registry start the records and :attr:`seq` belong to ("" before any)."""
        return self._epoch

    @property
    def in_sync(self) -> bool:
        """True when the records are exact as of :attr:`seq` and no gap is pending."""
        return self._has_snapshot and not self._buffer

    @property
    def needs_resync(self) -> bool:
        """True when a gap is pending (fetch the missing events or a new snapshot) or the
        registry restarted (fetch a new snapshot)."""
        return self._restarted or (self._has_snapshot and bool(self._buffer))

    def missing(self) -> tuple[int, int] | None:
        """The inclusive seq range that is missing, or None when there is no gap (or the
        registry restarted: then only a snapshot will do)."""
        if self._restarted or not self.needs_resync:
            return None
        return (self._seq + 1, min(self._buffer) - 1)

    def apply_snapshot(self, snapshot: Snapshot) -> bool:
        """Replace the state with ``snapshot``, then apply the buffered events after it.

        False, and nothing changed, when the snapshot is of an epoch already replaced (a
        registry that has since restarted answered it): ask for a snapshot again.
        """
        epoch = snapshot.epoch
        if epoch and epoch in self._retired:
            self.stale += 1
            self._restarted = self._restarted or not self._has_snapshot
            return False
        if epoch and self._epoch and epoch != self._epoch:
            self._retire(self._epoch)
        self._epoch = epoch or self._epoch
        self._restarted = False
        self._records = {r.key: r for r in snapshot.records}
        self._seq = snapshot.seq
        self._has_snapshot = True
        other = [s for s, e in self._buffer.items() if epoch and e.epoch and e.epoch != epoch]
        for s in other:
            del self._buffer[s]
        self.stale += len(other)
        old = [s for s in self._buffer if s <= snapshot.seq]
        for s in old:
            del self._buffer[s]
        self.duplicates += len(old)
        self._drain()
        return True

    def apply(self, event: Event) -> ApplyResult:
        """Apply one event from the stream, or hold or drop it; see :class:`ApplyResult`."""
        if event.epoch and event.epoch != self._epoch:  # "" (no epoch) matches any
            if event.epoch in self._retired:
                self.stale += 1
                return ApplyResult.STALE
            if self._epoch and (self._has_snapshot or self._restarted):
                self._restart(event)
                return ApplyResult.RESTARTED
            if self._epoch:  # before the first snapshot: the newest epoch heard wins
                self._retire(self._epoch)
                self._buffer = {}
            self._epoch = event.epoch
        if self._has_snapshot and event.seq <= self._seq:
            self.duplicates += 1
            return ApplyResult.DUPLICATE
        if self._has_snapshot and event.seq == self._seq + 1:
            self._apply(event)
            self._drain()
            return ApplyResult.APPLIED
        if event.seq in self._buffer:
            self.duplicates += 1
            return ApplyResult.DUPLICATE
        if len(self._buffer) >= self.max_buffer:
            self.overflows += 1
            return ApplyResult.OVERFLOW
        self._buffer[event.seq] = event
        if not self._has_snapshot:
            return ApplyResult.BUFFERED
        self.gaps += 1
        return ApplyResult.GAP

    def reset(self) -> None:
        """Forget everything (records, seq, epoch, held events): start as a new replica."""
        self._records = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer = {}
        self._epoch = ""
        self._restarted = False

    # -- queries -------------------------------------------------------------------------

    def get(self, name: str, instance: str) -> Registration | None:
        return self._records.get((name, instance))

    def lookup(self, name: str) -> list[Registration]:
        return sorted((r for r in self._records.values() if r.name == name), key=lambda r: r.key)

    def by_capability(self, cap: str) -> list[Registration]:
        return sorted((r for r in self._records.values() if cap in r.capabilities),
                      key=lambda r: r.key)

    def records(self) -> list[Registration]:
        return sorted(self._records.values(), key=lambda r: r.key)

    def __len__(self) -> int:
        return len(self._records)

    # -- internals -----------------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        if event.kind is EventKind.LEAVE:
            self._records.pop(event.record.key, None)
        else:
            self._records[event.record.key] = event.record
        self._seq = event.seq

    def _retire(self, epoch: str) -> None:
        if epoch not in self._retired:
            self._retired.append(epoch)

    def _restart(self, event: Event) -> None:
        """The registry restarted: nothing held so far can be trusted; keep this event."""
        self._retire(self._epoch)
        self._epoch = event.epoch
        self._records = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer = {event.seq: event}
        self._restarted = True
        self.restarts += 1

    def _drain(self) -> None:
        # Bounded: each pass removes one buffered event.
        while (event := self._buffer.pop(self._seq + 1, None)) is not None:
            self._apply(event)
