"""The discovery registry served over the mesh as ``agp/system/registry``.

A thin shell around the sans-IO ``RegistryTable``: requests register, heartbeat, look up and
list; a sweep every half second expires leases; every change is published on the topic
``agp.registry.events`` so watchers learn of joins and leaves without polling. A watcher
subscribes first, then asks for a snapshot, and feeds both to a ``Replica`` (the Clone
pattern): events older than the snapshot are dropped, none is missed.

Soft state: nothing is stored. After a registry restart, agents find their lease unknown on
their next heartbeat and register again within a second or two.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agents.base import Agent, Context, action
from discovery.records import parse_registration
from discovery.table import RegistryTable

REGISTRY_SERVICE = "agp/system/registry"
EVENTS_TOPIC = "agp.registry.events"
SWEEP_SECONDS = 0.5


class Registry(Agent):
    """Who is on the mesh: names, instances, capabilities, endpoints, load, labels."""

    name = "registry"
    namespace = "agp/system"
    capacity = 256
    register_with_registry = False

    def __init__(self, *, ttl: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table = RegistryTable(ttl=ttl)
        self._joined: dict[tuple[str, str], float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def on_stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for event in self.table.expire(time.monotonic()):
                self._joined.pop(event.record.key, None)
                self._publish(event.to_wire())

    def _publish(self, wire: dict[str, Any]) -> None:
        if self.core is not None:
            self.mesh.publish(EVENTS_TOPIC, wire)

    @action(inline=True)
    def register(self, data: Any, ctx: Context) -> Any:
        reg = parse_registration(data)
        now = time.monotonic()
        event = self.table.register(reg, now)
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
        now = time.monotonic()
        return [{**r.to_wire(), "age": round(now - self._joined.get(r.key, now), 1)}
                for r in self.table.list()]

    @action(inline=True)
    def snapshot(self, data: Any, ctx: Context) -> Any:
        return self.table.snapshot().to_wire()


if __name__ == "__main__":
    Registry.main()
