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
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from discovery.events import Event, EventKind, Snapshot
from discovery.records import Registration

DEFAULT_MAX_BUFFER: Final = 10_000


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


class Replica:
    """Records by (name, instance), as of :attr:`seq`."""

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.max_buffer = max_buffer
        self._records: dict[tuple[str, str], Registration] = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer: dict[int, Event] = {}
        self.duplicates = 0
        self.gaps = 0
        self.overflows = 0

    @property
    def seq(self) -> int:
        """The last sequence number reflected in the records (0 before any snapshot)."""
        return self._seq

    @property
    def has_snapshot(self) -> bool:
        return self._has_snapshot

    @property
    def in_sync(self) -> bool:
        """True when the records are exact as of :attr:`seq` and no gap is pending."""
        return self._has_snapshot and not self._buffer

    @property
    def needs_resync(self) -> bool:
        """True when a gap is pending: fetch the missing events or a new snapshot."""
        return self._has_snapshot and bool(self._buffer)

    def missing(self) -> tuple[int, int] | None:
        """The inclusive seq range that is missing, or None when there is no gap."""
        if not self.needs_resync:
            return None
        return (self._seq + 1, min(self._buffer) - 1)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the state with ``snapshot``, then apply the buffered events after it."""
        self._records = {r.key: r for r in snapshot.records}
        self._seq = snapshot.seq
        self._has_snapshot = True
        stale = [s for s in self._buffer if s <= snapshot.seq]
        for s in stale:
            del self._buffer[s]
        self.duplicates += len(stale)
        self._drain()

    def apply(self, event: Event) -> ApplyResult:
        """Apply one event from the stream, or hold or drop it; see :class:`ApplyResult`."""
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
        """Forget everything (e.g. the registry restarted and its seq began again)."""
        self._records = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer = {}

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

    def _drain(self) -> None:
        # Bounded: each pass removes one buffered event.
        while (event := self._buffer.pop(self._seq + 1, None)) is not None:
            self._apply(event)
