"""How an agent makes itself known: READY at the router (after every new session, so a
restarted router learns of it again), and a lease in the discovery registry (its record,
with the public key clients seal for, kept alive by a heartbeat a second: soft state).

A READY offers the free threads only (``free_slots``, 0 included). A router met in a new
session counts nothing in flight, so a pool thread still busy with a call from an earlier
session (within its deadline, a training step with minutes to go, or past it: see
``Calls._hold_slot``) is not offered to it, else it sends calls that wait unseen behind that
one while other instances idle. Each such call's end gives its thread back with a READY on
the same session; a retry from an earlier session that runs the handler now
(``agents.retries``) takes one back from the offer until it ends. A HELLO again to the
same router (a token refresh) is not a new session: that router counts its calls, and is
offered the same.

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
    threads_busy: int  # (Calls) pool jobs not ended, whichever router sent them
    sessions = 0  # routers announced to: a call from an earlier one is unseen by this one
    unseen_calls = 0  # of threads_busy, those the current router does not count in flight
    _announced_epoch = -1  # core.epoch (the router's run) sessions was last counted for

    def _on_session(self) -> None:
        if not self._may_announce():
            return
        epoch = self.core.epoch
        if epoch != self._announced_epoch:
            # a router that counts nothing of ours in flight (the first, a restarted one);
            # not a HELLO on the live connection (a token refresh): that one still counts
            # its calls, and the threads it counts are not taken off its offer again
            self._announced_epoch = epoch
            self.sessions += 1
            self.unseen_calls = self.threads_busy  # (all came before it)
        self._announce()

    def _may_announce(self) -> bool:
        core = self.core
        if core is not None and core.security is not None and not core.security.token:
            return False  # bootstrap session: READY waits for the token's HELLO
        # (a router restarted mid-drain: it would route new calls here to refuse)
        return not self.draining

    def _slot_taken(self) -> None:
        """A call that came in an earlier session than the current router's takes a thread
        (a retry made the runner): that router was offered the thread, so it is offered one
        less until the call ends (``_slot_back``)."""
        self.unseen_calls += 1
        self._offer_again()

    def _slot_back(self) -> None:
        """A call that came in an earlier session than the current router's ended: its
        thread is offered there again (the router that counted it frees it on its answer)."""
        self.unseen_calls -= 1
        self._offer_again()  # (sent before the call's late answer: it finds the instance)

    def _offer_again(self) -> None:
        """READY again on the live session. Not connected: the next session's READY counts
        every busy thread."""
        core = self.core
        if core is not None and core.connected and self._may_announce():
            self._announce()

    def _announce(self) -> None:
        """Send READY (now: what is sent after it reaches the router after it) offering the
        free threads. None free: 0, so the instance is known there (its service's calls wait
        in the router's queue, not refused as having no instance) until a thread returns."""
        core = self.core
        assert core is not None
        assert self.loop is not None
        free = max(0, self.capacity - self.unseen_calls)
        if free == 0:
            log.warning("no free thread (%d busy with calls from before this router): none "
                        "offered until one returns", self.unseen_calls)
        ready = agp_pb2.Ready(  # (capacity too: what a router older than free_slots reads)
            service=self.service, instance=self.instance, capacity=free,
            free_slots=free, weight=self.weight, policy=_POLICIES.get(self.policy, 1),
            actions=sorted(self._actions), labels=self.labels, version=self.version,
            public_key=core.security.public if core.security is not None else b"",
        )
        waiter = self.loop.create_future()
        core.start_request(Cmd.READY, self.service.encode(), ready.SerializeToString(), [],
                           waiter, timeout=10.0)
        self.loop.create_task(self._announced(waiter))

    async def _announced(self, waiter: asyncio.Future[list[bytes]]) -> None:
        assert self.loop is not None
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
