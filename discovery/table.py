"""The registry's state machine: records with leases, indexes, and numbered change events.

Sans-IO: nothing here reads a clock or touches a socket. The caller passes ``now`` (seconds
from ``time.monotonic()``) to every call, so tests drive time by hand. The service around it
(served over the mesh) calls :meth:`RegistryTable.expire` a few times a second, publishes the
returned events, and answers snapshot requests with :meth:`RegistryTable.snapshot`.

Leases: every record lives ``ttl`` seconds after its last register or heartbeat. With the
default 3 s lease, 1 s agent heartbeats and a sweep every 0.5 s, a dead agent is gone in
under 3.5 s, inside the mesh's 5 s failure-detection budget.

Ownership: an instance belongs to the public key that first registered it. The same key may
register again (a refresh, or an update when the record changed); another key is refused
with :class:`InstanceTaken` and nothing changes.

Quotas: one key holds at most ``max_per_key`` records (:class:`KeyQuotaExceeded`), so one
client cannot fill the table's memory or crowd out everyone else; the whole table holds at
most ``max_records`` (:class:`TableFull`). Every refused registration is counted in
:attr:`RegistryTable.refused` by reason.

Epoch: a random id drawn when the table is made. Sequence numbers start again at 1 with
every registry start, so events and snapshots carry the epoch too: a replica that sees a new
one knows its numbers mean nothing any more and takes a fresh snapshot.
"""

from __future__ import annotations

import hmac
import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from discovery.events import Event, EventKind, Snapshot
from discovery.records import Registration
from mesh.errors import Forbidden, NoSuchService, Overloaded

DEFAULT_TTL: Final = 3.0
DEFAULT_MAX_RECORDS: Final = 10_000
DEFAULT_MAX_PER_KEY: Final = 1_000
DEFAULT_HISTORY: Final = 1_024

Key = tuple[str, str]


class InstanceTaken(Forbidden):
    """The (name, instance) is registered by another public key."""

    reason = "instance_taken"


class NotOwner(Forbidden):
    """A heartbeat or deregistration came from a key that does not own the instance."""


class UnknownInstance(NoSuchService):
    """No live lease for that (name, instance): the agent should register again."""


class TableFull(Overloaded):
    """The table holds ``max_records`` records; a new instance cannot join."""

    reason = "table_full"


class KeyQuotaExceeded(Forbidden):
    """The registering key already holds ``max_per_key`` records. Forbidden, not Overloaded:
    waiting does not help (the key must deregister some), so clients must not retry it."""

    reason = "key_quota"


@dataclass(slots=True)
class _Lease:
    record: Registration
    expires: float


def _same_key(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class RegistryTable:
    """Records by (name, instance), with leases, lookups by name/capability/label, and events."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, max_records: int = DEFAULT_MAX_RECORDS,
                 max_per_key: int = DEFAULT_MAX_PER_KEY, history: int = DEFAULT_HISTORY,
                 epoch: str | None = None) -> None:
        if ttl <= 0 or max_records < 1 or max_per_key < 1 or history < 0:
            raise ValueError("ttl must be > 0, max_records >= 1, max_per_key >= 1, "
                             "history >= 0")
        self.ttl = ttl
        self.max_records = max_records
        self.max_per_key = max_per_key
        self.epoch = epoch or secrets.token_hex(8)
        self.refused: Counter[str] = Counter()
        self._per_key: Counter[str] = Counter()
        self._seq = 0
        self._now = float("-inf")
        # Ordered by last refresh; with one ttl for all, that is also expiry order, so expire()
        # pops from the front and stops at the first live lease.
        self._leases: OrderedDict[Key, _Lease] = OrderedDict()
        self._by_name: dict[str, dict[str, Registration]] = {}
        self._by_cap: dict[str, set[Key]] = {}
        self._by_label: dict[tuple[str, str], set[Key]] = {}
        self._history: deque[Event] = deque(maxlen=history)

    # -- changes -------------------------------------------------------------------------

    def register(self, reg: Registration, now: float) -> Event | None:
        """Add or refresh ``reg``; returns the JOIN/UPDATE event, or None for a pure refresh.

        Raises :class:`InstanceTaken` if another key owns the instance, :class:`TableFull`
        when a new instance would exceed ``max_records``, :class:`KeyQuotaExceeded` when it
        would give its key more than ``max_per_key``. A refusal changes nothing but
        :attr:`refused`.
        """
        now = self._clock(now)
        old = self._leases.get(reg.key)
        if old is not None:
            if not _same_key(old.record.public_key, reg.public_key):
                self.refused[InstanceTaken.reason] += 1
                raise InstanceTaken(f"{reg.name} instance {reg.instance} is owned by another key",
                                    details={"name": reg.name, "instance": reg.instance})
            self._touch(reg.key, now)
            if old.record == reg:
                return None
            self._unindex(old.record)
            old.record = reg
            self._index(reg)
            return self._emit(EventKind.UPDATE, reg)
        if self._per_key[reg.public_key] >= self.max_per_key:
            self.refused[KeyQuotaExceeded.reason] += 1
            raise KeyQuotaExceeded(
                f"key {reg.public_key[:8]}... already holds {self.max_per_key} records, the "
                "limit per key: deregister some first",
                details={"name": reg.name, "instance": reg.instance,
                         "limit": str(self.max_per_key)})
        if len(self._leases) >= self.max_records:
            self.refused[TableFull.reason] += 1
            raise TableFull(f"registry holds {self.max_records} records")
        self._leases[reg.key] = _Lease(reg, now + self.ttl)
        self._per_key[reg.public_key] += 1
        self._index(reg)
        return self._emit(EventKind.JOIN, reg)

    def heartbeat(self, name: str, instance: str, now: float, *, key: str | None = None) -> None:
        """Extend the lease. The service passes the sender's authenticated ``key``.

        Raises :class:`UnknownInstance` when there is no live lease (expired or never
        registered), :class:`NotOwner` when ``key`` does not own it.
        """
        now = self._clock(now)
        lease = self._owned((name, instance), key)
        if lease.expires <= now:
            raise UnknownInstance(f"lease of {name} instance {instance} has expired")
        self._touch((name, instance), now)

    def deregister(self, name: str, instance: str, now: float, *,
                   key: str | None = None) -> Event | None:
        """Remove an instance; returns its LEAVE event, or None if it was not there."""
        self._clock(now)
        if (name, instance) not in self._leases:
            return None
        lease = self._owned((name, instance), key)
        return self._remove(lease.record)

    def expire(self, now: float) -> list[Event]:
        """Drop every lease that ran out by ``now``; returns their LEAVE events in order."""
        now = self._clock(now)
        events: list[Event] = []
        while self._leases:
            lease = next(iter(self._leases.values()))
            if lease.expires > now:
                break
            events.append(self._remove(lease.record))
        return events

    # -- queries -------------------------------------------------------------------------

    def get(self, name: str, instance: str) -> Registration | None:
        lease = self._leases.get((name, instance))
        return lease.record if lease is not None else None

    def lookup(self, name: str) -> list[Registration]:
        """Every live instance registered under ``name``."""
        return list(self._by_name.get(name, {}).values())

    def by_capability(self, cap: str) -> list[Registration]:
        return self._records(self._by_cap.get(cap, ()))

    def by_label(self, key: str, value: str) -> list[Registration]:
        return self._records(self._by_label.get((key, value), ()))

    def __len__(self) -> int:
        return len(self._leases)

    def held_by(self, key: str) -> int:
        """How many records ``key`` holds (what :attr:`max_per_key` bounds)."""
        return self._per_key.get(key, 0)

    @property
    def seq(self) -> int:
        """The number of the last event (0 before any)."""
        return self._seq

    def snapshot(self) -> Snapshot:
        """The state as of :attr:`seq`, for a late joiner (see :mod:`discovery.replica`)."""
        return Snapshot(self._seq, tuple(lease.record for lease in self._leases.values()),
                        self.epoch)

    def events_since(self, seq: int) -> list[Event] | None:
        """Events after ``seq`` from the bounded history, or None if some are no longer kept.

        Lets a replica that saw a gap catch up without a full snapshot when the gap is short.
        """
        if seq >= self._seq:
            return []
        if not self._history or self._history[0].seq > seq + 1:
            return None
        return [e for e in self._history if e.seq > seq]

    # -- internals -----------------------------------------------------------------------

    def _clock(self, now: float) -> float:
        # A clock that steps back would break expiry order; never let time run backwards.
        if now > self._now:
            self._now = now
        return self._now

    def _owned(self, k: Key, key: str | None) -> _Lease:
        lease = self._leases.get(k)
        if lease is None:
            raise UnknownInstance(f"{k[0]} instance {k[1]} is not registered",
                                  details={"name": k[0], "instance": k[1]})
        if key is not None and not _same_key(lease.record.public_key, key):
            raise NotOwner(f"{k[0]} instance {k[1]} is owned by another key",
                           details={"name": k[0], "instance": k[1]})
        return lease

    def _touch(self, k: Key, now: float) -> None:
        self._leases[k].expires = now + self.ttl
        self._leases.move_to_end(k)

    def _remove(self, reg: Registration) -> Event:
        del self._leases[reg.key]
        left = self._per_key[reg.public_key] - 1
        if left > 0:
            self._per_key[reg.public_key] = left
        else:
            del self._per_key[reg.public_key]  # no entry kept for a key with no record
        self._unindex(reg)
        return self._emit(EventKind.LEAVE, reg)

    def _emit(self, kind: EventKind, reg: Registration) -> Event:
        self._seq += 1
        event = Event(self._seq, kind, reg, self.epoch)
        self._history.append(event)
        return event

    def _index(self, reg: Registration) -> None:
        self._by_name.setdefault(reg.name, {})[reg.instance] = reg
        for cap in reg.capabilities:
            self._by_cap.setdefault(cap, set()).add(reg.key)
        for pair in reg.labels.items():
            self._by_label.setdefault(pair, set()).add(reg.key)

    def _unindex(self, reg: Registration) -> None:
        instances = self._by_name.get(reg.name)
        if instances is not None:
            instances.pop(reg.instance, None)
            if not instances:
                del self._by_name[reg.name]
        for cap in reg.capabilities:
            _discard(self._by_cap, cap, reg.key)
        for pair in reg.labels.items():
            _discard(self._by_label, pair, reg.key)

    def _records(self, keys: Iterable[Key]) -> list[Registration]:
        return sorted((self._leases[k].record for k in keys), key=lambda r: r.key)

    def list(self) -> list[Registration]:  # last: the name shadows the builtin in this class
        """Every live record, least recently refreshed first."""
        return [lease.record for lease in self._leases.values()]


def _discard(index: dict[Any, set[Key]], bucket: Any, k: Key) -> None:
    members = index.get(bucket)
    if members is not None:
        members.discard(k)
        if not members:
            del index[bucket]
