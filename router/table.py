"""The routing table: peers (connections), instances (agent connections that sent READY)
and services (named groups of instances with a balancer and a bounded wait queue).

Keys are the raw bytes seen on the wire (routing ids, names), so the hot path looks things
up without decoding. A short name (``ml_trainer``) resolves to the one full name that ends
with it (``acme/ml/ml_trainer``) when exactly one does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from router.balancer import Policy, make_policy


@dataclass(eq=False, slots=True)
class Peer:
    """One DEALER connection, known from its HELLO."""

    rid: bytes
    name: str
    kind: int
    identity: str | None  # authenticated CURVE key (z85), None in insecure mode
    session: Any = None  # what the access layer returned for the HELLO
    last_seen: float = 0.0
    instance: Instance | None = None
    streams: set[int] = field(default_factory=set)
    batches: bool = False  # it takes BATCH messages (said on HELLO)
    session_id: int = 0  # its WELCOMEs' (a new one per new Peer: says a session was lost)


@dataclass(eq=False, slots=True)
class Instance:
    """An agent connection serving one service."""

    peer: Peer
    service: Service
    name: bytes  # full instance name: service/instance
    capacity: int  # calls in flight at once; 0: none until a later READY gives a slot
    weight: int
    actions: tuple[str, ...] = ()
    public_key: bytes = b""
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""
    accepting: bool = True  # False once draining
    current_weight: int = 0
    # (client rid, request id) -> (frames as sent, absolute deadline, idempotent)
    inflight: dict[tuple[bytes, int], tuple[list[bytes], float, bool]] = field(
        default_factory=dict
    )
    served: int = 0


@dataclass(eq=False, slots=True)
class Queued:
    frames: list[bytes]  # [client rid, route, dest, header, *payload]
    deadline: float
    ident: int
    idempotent: bool


@dataclass(eq=False, slots=True)
class Service:
    name: bytes
    policy: Policy
    max_queue: int
    instances: list[Instance] = field(default_factory=list)
    queue: deque[Queued] = field(default_factory=deque)

    def has_room(self) -> bool:
        return any(i.accepting and len(i.inflight) < i.capacity for i in self.instances)


class RoutingTable:
    """Services by name, instances by name, with short-name aliases."""

    def __init__(self, max_queue: int = 10_000) -> None:
        self.services: dict[bytes, Service] = {}
        self.instances: dict[bytes, Instance] = {}
        self._aliases: dict[bytes, set[bytes]] = {}
        self.max_queue = max_queue

    def add_instance(
        self,
        peer: Peer,
        service: bytes,
        instance: bytes,
        *,
        capacity: int,
        weight: int,
        policy: int,
        actions: tuple[str, ...] = (),
        public_key: bytes = b"",
        labels: dict[str, str] | None = None,
        version: str = "",
    ) -> Instance:
        svc = self.services.get(service)
        if svc is None:
            svc = Service(service, make_policy(policy), self.max_queue)
            self.services[service] = svc
            short = service.rsplit(b"/", 1)[-1]
            if short != service:
                self._aliases.setdefault(short, set()).add(service)
        full = service + b"/" + instance
        inst = Instance(
            peer, svc, full, max(0, capacity), max(1, weight), actions, public_key,
            dict(labels or {}), version,
        )
        svc.instances.append(inst)
        self.instances[full] = inst
        peer.instance = inst
        return inst

    def remove_instance(self, inst: Instance) -> None:
        svc = inst.service
        if inst in svc.instances:
            svc.instances.remove(inst)
        self.instances.pop(inst.name, None)
        inst.peer.instance = None
        self.forget_if_empty(svc)

    def forget_if_empty(self, svc: Service) -> None:
        """Drop a service with no instance and nothing queued, and its short-name alias
        (a stale alias would make the short name ambiguous for the next service by it)."""
        if svc.instances or svc.queue:
            return
        self.services.pop(svc.name, None)
        short = svc.name.rsplit(b"/", 1)[-1]
        names = self._aliases.get(short)
        if names is not None:
            names.discard(svc.name)
            if not names:
                del self._aliases[short]

    def resolve(self, dest: bytes) -> Service | Instance | None:
        """A service, an instance, or None. Called once per request."""
        svc = self.services.get(dest)
        if svc is not None:
            return svc
        inst = self.instances.get(dest)
        if inst is not None:
            return inst
        names = self._aliases.get(dest)
        if names is not None and len(names) == 1:
            return self.services.get(next(iter(names)))
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        """A plain view of services and instances for status pages and `agp status`."""
        out = []
        for svc in self.services.values():
            out.append(
                {
                    "service": svc.name.decode(errors="replace"),
                    "policy": svc.policy.name,
                    "queued": len(svc.queue),
                    "instances": [
                        {
                            "name": i.name.decode(errors="replace"),
                            "capacity": i.capacity,
                            "weight": i.weight,
                            "inflight": len(i.inflight),
                            "served": i.served,
                            "accepting": i.accepting,
                            "labels": i.labels,
                            "version": i.version,
                            "actions": list(i.actions),
                        }
                        for i in svc.instances
                    ],
                }
            )
        return out
