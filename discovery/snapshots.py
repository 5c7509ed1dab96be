"""Registry snapshots served page by page, each page under the mesh's message size limit.

A whole table in one reply can pass the router's ``max_message_bytes`` (10,000 records of a
few KiB each do; so do a few hundred under a lowered limit); the router then refuses the
reply and a replica could never sync. So the registry freezes the table at the first page's
request (a tuple of references to its immutable records, as of one seq and epoch) and hands
it out in pages of at most ``page_bytes`` encoded bytes, each naming the ``next`` cursor.
Every page of one cursor is of the same frozen state: the pages add up to the snapshot at
that seq exactly, whatever changed in between (the events since carry those changes).

Server side, :class:`SnapshotPages` is sans-IO (the caller passes ``now``) and bounded: at
most ``max_open`` frozen snapshots, each dropped ``ttl`` seconds after its last page or
when its last page is served, and at most ``per_caller`` for one caller (its own oldest
makes room: a caller can only spoil its own fetches). When all are taken a new fetch is
refused OVERLOADED rather than evicting another caller's (a crowd resyncing at once, after a
registry restart, would evict each other's cursors for ever). An unknown or expired cursor
is :class:`CursorExpired`, and the client starts again. Every drop is counted by reason.
Client side, :func:`fetch_snapshot` and :func:`fetch_list` page through with any
``request(action, data)`` callable, bounded in pages and restarts.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from discovery.events import MAX_SNAPSHOT_RECORDS, Snapshot, parse_cursor, parse_snapshot_page
from discovery.records import Registration
from mesh.errors import Malformed, Overloaded, TooLarge

PAGE_BYTES: Final = 64 * 1024  # default budget: far under any sane router limit
MIN_PAGE_BYTES: Final = 32 * 1024  # one record at its caps (~18 KiB) always fits a page
MAX_PAGE_BYTES: Final = 4 * 1024 * 1024
MAX_OPEN: Final = 64  # frozen snapshots held at once (references, not copies)
PER_CALLER: Final = 2  # of them, for one caller (connection)
CURSOR_TTL: Final = 30.0  # seconds a frozen snapshot outlives its last page
MAX_RESTARTS: Final = 3  # a client's fresh starts after a cursor expired
PAGE_OVERHEAD: Final = 128  # the page map's own keys, seq, epoch, cursor


class CursorExpired(Malformed):
    """The cursor is unknown: expired, evicted, or handed out by a registry since restarted.
    Start again from the first page."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or "snapshot cursor unknown or expired: start again",
                         details={"field": "cursor", "reason": "cursor_expired"})


@dataclass(slots=True)
class _Frozen:
    snapshot: Snapshot
    expires: float
    caller: bytes = b""


def _size(record: dict[str, Any]) -> int:
    return len(msgpack.packb(record))


class SnapshotPages:
    """Frozen snapshots and their cursors, for the registry's ``snapshot`` and ``list``."""

    def __init__(self, *, max_open: int = MAX_OPEN, per_caller: int = PER_CALLER,
                 ttl: float = CURSOR_TTL, on_drop: Callable[[str], None] | None = None
                 ) -> None:
        self.max_open = max_open
        self.per_caller = per_caller
        self.ttl = ttl
        self.on_drop = on_drop  # called with the reason of each drop (the agent's metric)
        self._open: OrderedDict[str, _Frozen] = OrderedDict()
        self.evicted = 0  # a caller's own frozen snapshots dropped for its newer one
        self.expired = 0  # dropped after ttl without a page
        self.busy = 0  # first pages refused: every slot held by fetches under way

    def _drop(self, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(f"snapshot_{reason}")

    def __len__(self) -> int:
        return len(self._open)

    def page(self, request: object, snapshot: Callable[[], Snapshot], now: float,
             render: Callable[[Registration], dict[str, Any]] = Registration.to_wire,
             caller: bytes = b"") -> dict[str, Any]:
        """One page for ``request`` (None, or a map with ``cursor`` and/or ``page_bytes``):
        ``{"seq", "epoch", "records", "next"?}``. ``snapshot()`` freezes the table for a
        first page; ``render`` turns a record into its wire map; ``caller`` (its connection)
        is whom a frozen snapshot is held for."""
        if request is not None and not isinstance(request, Mapping):
            raise Malformed("snapshot request: expected a map or nothing",
                            details={"field": "request"})
        opts: Mapping[Any, Any] = request or {}
        self._expire(now)
        budget = _page_bytes(opts.get("page_bytes"))
        if opts.get("cursor") is None:
            frozen, offset = _Frozen(snapshot(), now + self.ttl, caller), 0
            token = ""
        else:
            token, offset = _split(parse_cursor(opts["cursor"]))
            found = self._open.get(token)
            if found is None or offset > len(found.snapshot.records):
                self._drop("cursor_unknown")
                raise CursorExpired()
            frozen = found
        records = frozen.snapshot.records
        out: list[dict[str, Any]] = []
        used = PAGE_OVERHEAD
        end = offset
        while end < len(records):  # bounded: end grows by one each pass
            wire = render(records[end])
            size = _size(wire)
            if out and used + size > budget:
                break
            out.append(wire)
            used += size
            end += 1
        page: dict[str, Any] = {"seq": frozen.snapshot.seq, "epoch": frozen.snapshot.epoch,
                                "records": out}
        if end < len(records):
            if not token:
                token = self._keep(frozen)
            frozen.expires = now + self.ttl
            self._open.move_to_end(token)
            page["next"] = f"{token}.{end}"
        elif token:
            del self._open[token]  # the last page: nothing more to serve from it
        return page

    def _keep(self, frozen: _Frozen) -> str:
        mine = [t for t, f in self._open.items() if f.caller == frozen.caller]
        while len(mine) >= self.per_caller:  # its own oldest (a restarted fetch) goes
            del self._open[mine.pop(0)]
            self.evicted += 1
            self._drop("evicted")
        if len(self._open) >= self.max_open:
            self.busy += 1
            self._drop("busy")
            raise Overloaded(f"the registry is serving {self.max_open} snapshots already; "
                             "retry shortly", details={"field": "cursor", "reason": "busy"})
        token = secrets.token_hex(8)
        self._open[token] = frozen
        return token

    def _expire(self, now: float) -> None:
        for token in [t for t, f in self._open.items() if f.expires <= now]:
            del self._open[token]
            self.expired += 1
            self._drop("expired")


def _page_bytes(value: object) -> int:
    if value is None:
        return PAGE_BYTES
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("page_bytes must be an integer", details={"field": "page_bytes"})
    return max(MIN_PAGE_BYTES, min(MAX_PAGE_BYTES, value))


def _split(cursor: str) -> tuple[str, int]:
    token, sep, offset = cursor.rpartition(".")
    if not sep or not token or not offset.isdigit() or len(offset) > 9:
        raise Malformed("cursor is not one this registry handed out",
                        details={"field": "cursor"})
    return token, int(offset)


# -- client side --------------------------------------------------------------------------

Request = Callable[[str, Any], Any]
"""``request(action, data)``: one call to the registry, e.g.
``lambda a, d: mesh.request(REGISTRY_SERVICE, a, d)``."""


def _pages(request: Request, action: str, page_bytes: int | None) -> list[Any]:
    """Every page of one frozen snapshot; restarts (bounded) when its cursor expires."""
    first: dict[str, Any] = {} if page_bytes is None else {"page_bytes": page_bytes}
    max_pages = MAX_SNAPSHOT_RECORDS + 1  # a page holds at least one record
    for _ in range(MAX_RESTARTS + 1):
        pages: list[Any] = []
        data: dict[str, Any] = first
        try:
            for _ in range(max_pages):
                page = request(action, data)
                pages.append(page)
                cursor = page.get("next") if isinstance(page, Mapping) else None
                if cursor is None:
                    return pages
                data = {**first, "cursor": cursor}
        except Malformed as exc:
            if exc.details.get("reason") != "cursor_expired":
                raise
            continue
        raise TooLarge(f"{action}: more than {max_pages} pages", details={"field": "next"})
    raise CursorExpired(f"{action}: the cursor expired {MAX_RESTARTS + 1} times in a row")


def fetch_snapshot(request: Request, *, page_bytes: int | None = None,
                   max_records: int = MAX_SNAPSHOT_RECORDS) -> Snapshot:
    """The registry's whole table as one :class:`Snapshot`, fetched page by page; every page
    checked as untrusted input, and all of one seq and epoch."""
    records: dict[tuple[str, str], Registration] = {}
    head: Snapshot | None = None
    for raw in _pages(request, "snapshot", page_bytes):
        page, _ = parse_snapshot_page(raw, max_records=max_records)
        if head is None:
            head = page
        elif (page.seq, page.epoch) != (head.seq, head.epoch):
            raise Malformed("snapshot pages of different states", details={"field": "seq"})
        for r in page.records:
            if r.key in records:
                raise Malformed("snapshot: duplicate (name, instance)",
                                details={"field": "records"})
            records[r.key] = r
        if len(records) > max_records:
            raise TooLarge(f"snapshot: more than {max_records} records",
                           details={"field": "records"})
    assert head is not None
    return Snapshot(head.seq, tuple(records.values()), head.epoch)


def fetch_list(request: Request, *, page_bytes: int | None = None,
               max_records: int = MAX_SNAPSHOT_RECORDS) -> list[dict[str, Any]]:
    """The registry's ``list`` (records with their age), fetched page by page."""
    out: list[dict[str, Any]] = []
    for raw in _pages(request, "list", page_bytes):
        rows = raw.get("records") if isinstance(raw, Mapping) else None
        if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
            raise Malformed("list page: records must be a list of maps",
                            details={"field": "records"})
        out.extend(dict(r) for r in rows)
        if len(out) > max_records:
            raise TooLarge(f"list: more than {max_records} records",
                           details={"field": "records"})
    return out
