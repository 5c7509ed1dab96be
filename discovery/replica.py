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

Beats: events alone leave two holes, because a subscriber learns only when one arrives. A
registry that restarts with nobody registering after it sends no event of its new epoch; the
last events before a quiet spell, lost on the way, are followed by none that shows the gap.
So the registry also says a :class:`~discovery.events.Beat` (its seq and epoch) every second,
fed to :meth:`Replica.observe_beat`: a new epoch is a restart as above, a seq past the
replica's is a gap (:meth:`Replica.missing` runs to it) until events or a snapshot reach it.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

from discovery.events import Beat, Event, EventKind, Snapshot
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
    CURRENT = "current"
    """A beat at or below the replica's seq: nothing in it is news; nothing changed."""


class Replica:
    """Records by (name, instance), as of :attr:`seq`.

    Fed events with :meth:`apply`, snapshots with :meth:`apply_snapshot` and the registry's
    beats with :meth:`observe_beat`; whenever :attr:`needs_resync` is True, :meth:`missing`
    says which events to fetch (or, when it is None, take a snapshot). A beat never changes
    the records: it only tells the replica that it is behind (GAP) or out of date (RESTARTED).
    """

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.max_buffer = max_buffer
        self._records: dict[tuple[str, str], Registration] = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer: dict[int, Event] = {}
        self._epoch = ""  # of the snapshot or newest event; "" before any (or none said)
        self._retired: deque[str] = deque(maxlen=MAX_RETIRED_EPOCHS)
        self._restarted = False
        self._known = 0  # the highest seq of this epoch a beat said exists
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
        return self._has_snapshot and not self._buffer and self._known <= self._seq

    @property
    def needs_resync(self) -> bool:
        """True when a gap is pending (events buffered past a hole, or a beat numbered past
        :attr:`seq`: fetch the missing events or a new snapshot) or the registry restarted
        (fetch a new snapshot)."""
        return self._restarted or (self._has_snapshot
                                   and (bool(self._buffer) or self._known > self._seq))

    def missing(self) -> tuple[int, int] | None:
        """The inclusive seq range that is missing (the first, when events are buffered past
        it), or None when there is no gap (or the registry restarted: then only a snapshot
        will do)."""
        if self._restarted or not self.needs_resync:
            return None
        return (self._seq + 1, min(self._buffer) - 1 if self._buffer else self._known)

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
            self._known = 0  # numbers of the old epoch: they say nothing of this one
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
        changed = self._epoch_said(event.epoch)
        if changed is ApplyResult.RESTARTED:
            self._buffer[event.seq] = event  # the first of the new registry's
        if changed is not None:
            return changed
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

    def observe_beat(self, beat: Beat) -> ApplyResult:
        """Compare the registry's position with the replica's; no record changes.

        STALE for a beat of a replaced epoch; RESTARTED for a new epoch (records forgotten,
        as for an event of one); GAP when the registry has numbered events past :attr:`seq`
        (lost on the way, or held past a hole: :attr:`needs_resync` stays True until events
        or a snapshot reach the beat's seq); BUFFERED before the first snapshot (its seq is
        noted for it); CURRENT otherwise.
        """
        changed = self._epoch_said(beat.epoch)
        if changed is ApplyResult.RESTARTED:
            self._known = beat.seq  # what the new registry has numbered so far
        if changed is not None:
            return changed
        if self._has_snapshot and beat.seq <= self._seq:
            return ApplyResult.CURRENT
        if beat.seq > max(self._known, self._seq, max(self._buffer, default=0)):
            self._known = beat.seq
            if self._has_snapshot:
                self.gaps += 1  # a gap no event showed (the last ones before a quiet spell)
        if not self._has_snapshot:
            return ApplyResult.BUFFERED
        return ApplyResult.GAP

    def reset(self) -> None:
        """Forget everything (records, seq, epoch, held events): start as a new replica."""
        self._records = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer = {}
        self._epoch = ""
        self._restarted = False
        self._known = 0

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

    def _epoch_said(self, epoch: str) -> ApplyResult | None:
        """What an event's or a beat's ``epoch`` means: STALE (an epoch already replaced:
        counted, nothing changes), RESTARTED (a new registry: records forgotten), or None
        (this epoch, no epoch said, or the first heard before any snapshot: taken)."""
        if not epoch or epoch == self._epoch:  # "" (no epoch) matches any
            return None
        if epoch in self._retired:
            self.stale += 1
            return ApplyResult.STALE
        if self._epoch and (self._has_snapshot or self._restarted):
            self._restart(epoch)
            return ApplyResult.RESTARTED
        self._adopt(epoch)
        return None

    def _adopt(self, epoch: str) -> None:
        """Before the first snapshot: the newest epoch heard wins; what the old one held goes."""
        if self._epoch:
            self._retire(self._epoch)
            self._buffer = {}
            self._known = 0
        self._epoch = epoch

    def _restart(self, epoch: str) -> None:
        """The registry restarted: nothing held so far can be trusted."""
        self._retire(self._epoch)
        self._epoch = epoch
        self._records = {}
        self._seq = 0
        self._has_snapshot = False
        self._buffer = {}
        self._known = 0
        self._restarted = True
        self.restarts += 1

    def _drain(self) -> None:
        # Bounded: each pass removes one buffered event.
        while (event := self._buffer.pop(self._seq + 1, None)) is not None:
            self._apply(event)
