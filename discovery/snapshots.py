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
when its last page is served; an unknown or expired cursor is :class:`CursorExpired`, and
the client starts again. Client side, :func:`fetch_snapshot` and :func:`fetch_list` page
through with any ``request(action, data)`` callable, bounded in pages and restarts.
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
from mesh.errors import Malformed, TooLarge

PAGE_BYTES: Final = 64 * 1024  # default budget: far under any sane router limit
MIN_PAGE_BYTES: Final = 32 * 1024  # one record at its caps (~18 KiB) always fits a page
MAX_PAGE_BYTES: Final = 4 * 1024 * 1024
MAX_OPEN: Final = 16  # frozen snapshots held at once (references, not copies)
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


def _size(record: dict[str, Any]) -> int:
    return len(msgpack.packb(record))


class SnapshotPages:
    """Frozen snapshots and their cursors, for the registry's ``snapshot`` and ``list``."""

    def __init__(self, *, max_open: int = MAX_OPEN, ttl: float = CURSOR_TTL) -> None:
        self.max_open = max_open
        self.ttl = ttl
        self._open: OrderedDict[str, _Frozen] = OrderedDict()
        self.evicted = 0  # frozen snapshots dropped for room before their last page
        self.expired = 0  # dropped after ttl without a page

    def __len__(self) -> int:
        return len(self._open)

    def page(self, request: object, snapshot: Callable[[], Snapshot], now: float,
             render: Callable[[Registration], dict[str, Any]] = Registration.to_wire,
             ) -> dict[str, Any]:
        """One page for ``request`` (None, or a map with ``cursor`` and/or ``page_bytes``):
        ``{"seq", "epoch", "records", "next"?}``. ``snapshot()`` freezes the table for a
        first page; ``render`` turns a record into its wire map."""
        if request is not None and not isinstance(request, Mapping):
            raise Malformed("snapshot request: expected a map or nothing",
                            details={"field": "request"})
        opts: Mapping[Any, Any] = request or {}
        self._expire(now)
        budget = _page_bytes(opts.get("page_bytes"))
        if opts.get("cursor") is None:
            frozen, offset = _Frozen(snapshot(), now + self.ttl), 0
            token = ""
        else:
            token, offset = _split(parse_cursor(opts["cursor"]))
            found = self._open.get(token)
            if found is None or offset > len(found.snapshot.records):
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
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)
            self.evicted += 1
        token = secrets.token_hex(8)
        self._open[token] = frozen
        return token

    def _expire(self, now: float) -> None:
        for token in [t for t, f in self._open.items() if f.expires <= now]:
            del self._open[token]
            self.expired += 1


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
