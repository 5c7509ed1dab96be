"""The discovery registry served over the mesh as ``agp/system/registry``.

A thin shell around the sans-IO ``RegistryTable``: requests register, heartbeat, look up and
list; a sweep every half second expires leases; every change is published on the topic
``agp.registry.events`` so watchers learn of joins and leaves without polling. A watcher
subscribes first, then asks for a snapshot, and feeds both to a ``Replica`` (the Clone
pattern): events older than the snapshot are dropped, none is missed. Every
:data:`BEAT_SECONDS` it also says a beat (its seq and epoch) on ``agp.registry.beat``, so a
watcher hears of a restart, or of lost last events, while nothing changes (see
:mod:`discovery.replica`). Not under the events topic: subscriptions match by prefix, and
a watcher of events only would take a beat for a malformed event.

Soft state: nothing is stored. After a registry restart, agents find their lease unknown on
their next heartbeat and register again within a second or two; the new registry's events and
snapshots carry a new epoch, so watchers know to take a fresh snapshot.

Snapshots and the list come in pages under the mesh's message size limit (see
:mod:`discovery.snapshots`); a ``list`` asked with no arguments still answers one plain list
when it fits :data:`LEGACY_LIST_BYTES`, and TOO_LARGE (use the pages) when it does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from agents.base import Agent, Context, action
from discovery.events import Beat
from discovery.records import Registration, parse_registration
from discovery.snapshots import SnapshotPages
from discovery.table import InstanceTaken, KeyQuotaExceeded, RegistryTable, TableFull
from mesh.errors import TooLarge
from mesh.wire import DEFAULT_MAX_MESSAGE_BYTES

REGISTRY_SERVICE = "agp/system/registry"
EVENTS_TOPIC = "agp.registry.events"
BEAT_TOPIC = "agp.registry.beat"
TOPICS_PREFIX = "agp.registry."  # both: one subscription hears events and beats in order
SWEEP_SECONDS = 0.5
BEAT_SECONDS = 1.0
LEGACY_LIST_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES // 2


class Registry(Agent):
    """Who is on the mesh: names, instances, capabilities, endpoints, load, labels."""

    name = "registry"
    namespace = "agp/system"
    capacity = 256
    register_with_registry = False

    def __init__(self, *, ttl: float = 3.0, beat_seconds: float = BEAT_SECONDS,
                 **kwargs: Any) -> None:
        if beat_seconds <= 0:
            raise ValueError("beat_seconds must be > 0")
        super().__init__(**kwargs)
        self.table = RegistryTable(ttl=ttl)
        self.beat_seconds = beat_seconds
        self.pages = SnapshotPages(on_drop=self._count_drop)  # agp_agent_dropped_total
        self._joined: dict[tuple[str, str], float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep())
        self._beater = loop.create_task(self._beat())

    async def on_stop(self) -> None:
        for task in (self._sweeper, self._beater):
            if task is not None:
                task.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for event in self.table.expire(time.monotonic()):
                self._joined.pop(event.record.key, None)
                self._publish(event.to_wire())

    async def _beat(self) -> None:
        # the first at once: watchers of the registry before this one learn the new epoch
        while True:
            self._publish(Beat(self.table.seq, self.table.epoch).to_wire(), BEAT_TOPIC)
            await asyncio.sleep(self.beat_seconds)

    def _publish(self, wire: dict[str, Any], topic: str = EVENTS_TOPIC) -> None:
        if self.core is not None:
            self.mesh.publish(topic, wire)

    @action(inline=True)
    def register(self, data: Any, ctx: Context) -> Any:
        reg = parse_registration(data)
        now = time.monotonic()
        try:
            event = self.table.register(reg, now)
        except (InstanceTaken, KeyQuotaExceeded, TableFull) as exc:
            self._count_drop(f"register_{exc.reason}")  # agp_agent_dropped_total{reason}
            raise
        self._joined.setdefault(reg.key, now)
        if event is not None:
            self._publish(event.to_wire())
        return {"ttl": self.table.ttl, "seq": self.table.seq}

    @action(inline=True)
    def heartbeat(self, data: Any, ctx: Context) -> Any:
        self.table.heartbeat(str(data["name"]), str(data["instance"]), time.monotonic(),
                             key=data.get("public_key"))
        return None

    @action(inline=True)
    def deregister(self, data: Any, ctx: Context) -> Any:
        event = self.table.deregister(str(data["name"]), str(data["instance"]),
                                      time.monotonic(), key=data.get("public_key"))
        self._joined.pop((str(data["name"]), str(data["instance"])), None)
        if event is not None:
            self._publish(event.to_wire())
        return None

    @action(inline=True)
    def lookup(self, data: Any, ctx: Context) -> Any:
        query = data or {}
        if "capability" in query:
            found = self.table.by_capability(str(query["capability"]))
        elif "label" in query:
            k, v = query["label"]
            found = self.table.by_label(str(k), str(v))
        else:
            found = self.table.lookup(str(query["name"]))
        return [r.to_wire() for r in found]

    @action(inline=True)
    def list(self, data: Any, ctx: Context) -> Any:
        """Every record with its age: one page (``{"records", "next"?}``) when asked with a
        map (``cursor``, ``page_bytes``); a plain list when asked with nothing (older
        callers), refused as TOO_LARGE past :data:`LEGACY_LIST_BYTES`."""
        now = time.monotonic()

        def aged(r: Registration) -> dict[str, Any]:
            return {**r.to_wire(), "age": round(now - self._joined.get(r.key, now), 1)}

        if isinstance(data, Mapping):
            return self.pages.page(data, self.table.snapshot, now, aged, caller=ctx.crid)
        return _whole([aged(r) for r in self.table.list()], "list", "fetch_list")

    @action(inline=True)
    def snapshot(self, data: Any, ctx: Context) -> Any:
        """One page of the table as of one seq and epoch when asked with a map (see
        :mod:`discovery.snapshots`); the whole snapshot when asked with nothing (older
        callers, which take the answer for the whole table), TOO_LARGE past
        :data:`LEGACY_LIST_BYTES`."""
        if isinstance(data, Mapping):
            return self.pages.page(data, self.table.snapshot, time.monotonic(),
                                   caller=ctx.crid)
        return _whole(self.table.snapshot().to_wire(), "snapshot", "fetch_snapshot")


def _whole(body: Any, action: str, fetch: str) -> Any:
    """``body`` in one answer for a caller that does not page, if it fits."""
    size = len(msgpack.packb(body))
    if size > LEGACY_LIST_BYTES:
        raise TooLarge(f"the {action} is {size} bytes; ask page by page "
                       f"(discovery.snapshots.{fetch})", details={"field": action})
    return body


if __name__ == "__main__":
    Registry.main()
