"""How an agent makes itself known: READY at the router (after every new session, so a
restarted router learns of it again), and a lease in the discovery registry (its record,
with the public key clients seal for, kept alive by a heartbeat a second: soft state).

A mixin of :class:`agents.base.Agent`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mesh.errors import Error
from mesh.wire import Cmd
from proto import agp_pb2

log = logging.getLogger("agp.agent")

_POLICIES = {"round_robin": 0, "weighted_round_robin": 1, "least_outstanding": 2}


class Presence:
    """READY and the registry lease, for :class:`agents.base.Agent`."""

    # provided by Agent
    core: Any
    loop: asyncio.AbstractEventLoop | None
    service: str
    instance: str
    capacity: int
    weight: int
    policy: str
    labels: dict[str, str]
    version: str
    capabilities: Any
    register_with_registry: bool
    registered: bool
    draining: bool
    mesh: Any
    _actions: dict[str, Any]
    _ready: asyncio.Future[str] | None
    _registry_task: asyncio.Task[None] | None

    def _on_session(self) -> None:
        assert self.loop is not None
        core = self.core
        if core is not None and core.security is not None and not core.security.token:
            return  # bootstrap session: READY waits for the token's HELLO
        if self.draining:
            return  # (a router restarted mid-drain: it would route new calls here to refuse)
        self.loop.create_task(self._announce())

    async def _announce(self) -> None:
        core = self.core
        assert core is not None
        assert self.loop is not None
        ready = agp_pb2.Ready(
            service=self.service, instance=self.instance, capacity=self.capacity,
            weight=self.weight, policy=_POLICIES.get(self.policy, 1),
            actions=sorted(self._actions), labels=self.labels, version=self.version,
            public_key=core.security.public if core.security is not None else b"",
        )
        waiter = self.loop.create_future()
        core.start_request(Cmd.READY, self.service.encode(), ready.SerializeToString(), [],
                           waiter, timeout=10.0)
        try:
            msg = await waiter
        except Error as exc:
            log.error("READY refused: %s", exc)
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(exc)
            return
        name = msg[1].decode()
        log.info("serving %s as %s", self.service, name)
        if self.register_with_registry and self._registry_task is None:
            self._registry_task = self.loop.create_task(self._registry_lease())
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(name)

    @property
    def public_key(self) -> str:
        """This agent's Curve25519 public key (z85): its CURVE key, or one made for the run."""
        if self.core is not None and self.core.security is not None:
            return self.core.security.public.decode()
        if not hasattr(self, "_ephemeral_key"):
            import zmq

            self._ephemeral_key = zmq.curve_keypair()[0].decode()
        return self._ephemeral_key

    def registration(self) -> dict[str, Any]:
        """This agent's record for the discovery registry."""
        return {"name": self.service, "instance": self.instance, "public_key": self.public_key,
                "capabilities": list(self.capabilities), "version": self.version,
                "capacity": self.capacity, "weight": self.weight, "labels": self.labels}

    async def _registry_lease(self) -> None:
        """Register with the registry, then heartbeat the lease every second (soft state)."""
        from discovery.service import REGISTRY_SERVICE
        from mesh.errors import NoSuchService

        hb = {"name": self.service, "instance": self.instance, "public_key": self.public_key}
        misses = 0
        while not self.draining:
            try:
                if not self.registered:
                    await self.mesh.request(REGISTRY_SERVICE, "register", self.registration(),
                                            timeout=2.0)
                    self.registered = True
                else:
                    await self.mesh.request(REGISTRY_SERVICE, "heartbeat", hb, timeout=2.0)
            except NoSuchService:
                self.registered = False  # no registry yet, or it restarted: register again
                continue_soon = True
            except Error as exc:
                log.debug("registry lease: %s", exc)
                continue_soon = False
            else:
                continue_soon = False
            # a registry that just restarted is retried quickly; none at all, slowly
            misses = misses + 1 if continue_soon else 0
            await asyncio.sleep(min(5.0, 0.2 * 2 ** misses) if continue_soon else 1.0)
