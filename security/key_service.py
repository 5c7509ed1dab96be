"""Pub/sub end to end: the topic key service (``agp/system/keys``).

The router and proxy must hold no key that opens a payload, so topic keys live in a system
agent of their own with its own enrolled identity. ``topic_key {topic, role}`` answers only
a request sealed end to end (the Box sender proof is what names the caller: no claimed
field), checks the caller's ``publish``/``subscribe`` right on that topic under the same
RBAC files the router reads (policy, trust store, OAuth2 client roles), and returns the
topic's current generation granted to the caller's key (:class:`~security.topic_keys.
TopicOwner`): the public key to a publisher, the keypair to a subscriber. It remembers who
holds what; when the policy, the trust store or the client roles change so that a holder
loses the subscribe right (or its key is revoked) it rotates that topic and publishes a
notice on ``agp.system.topickeys``; holders fetch the new generation and the departed one is
refused it. Publishers also re-fetch within a lease (60 s), should a notice be missed.

One instance per mesh: keys live in memory. A restarted service announces itself (a notice
with its key), and members drop what the old one granted and fetch again.

The client half (fetching, sealing, opening, holding) is ``security.topic_key_client``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Final

from agents.base import Agent, Context, action
from mesh.errors import Error, Forbidden, Malformed, Overloaded, Unauthenticated
from security.clients import ClientRegistry
from security.keys import KeyPair, normalize_key
from security.rbac import PolicyStore, Principal
from security.topic_key_client import KEY_SERVICE, NOTICE_TOPIC
from security.topic_keys import ROLES, TopicOwner

__all__ = ["KEY_SERVICE", "LEASE_SECONDS", "NOTICE_TOPIC", "TopicKeyService"]

log = logging.getLogger("agp.topic_keys")

LEASE_SECONDS: Final = 60.0
MAX_TOPICS: Final = 100_000  # topics with keys (each keeps up to three keypairs) ...
MAX_NEW_TOPICS_PER_KEY: Final = 10_000  # ... and how many of them one key may have begun
WATCH_SECONDS: Final = 0.5


class TopicKeyService(Agent):
    """Grants topic keys to those RBAC allows; rotates a topic when a reader loses the right."""

    name = "keys"
    namespace = "agp/system"
    capacity = 64
    require_e2e = True
    plain_actions = frozenset({"stats"})

    def __init__(self, *, home: str | Path | None = None, rbac: str | Path | None = None,
                 lease: float = LEASE_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from security.home import open_home

        self.home = open_home(home)
        self.rbac = PolicyStore(rbac or os.environ.get("AGP_RBAC_POLICY") or self.home.policy)
        self.trust = self.home.trust()
        self.lease = lease
        self._clients: dict[bytes, Any] = {}
        self._clients_sig: Any = None
        self._reload_clients()
        self.owner: TopicOwner | None = None
        self.holders: dict[str, dict[bytes, set[str]]] = {}  # topic -> key -> roles
        self.rotations = 0
        self.refused: dict[str, int] = {}
        self.max_topics, self.max_new_topics_per_key = MAX_TOPICS, MAX_NEW_TOPICS_PER_KEY
        self._begun: dict[bytes, int] = {}  # key -> topics whose first key it asked for
        self._watcher: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        assert self.security is not None, "the key service needs an identity (a secure mesh)"
        self.owner = TopicOwner(KeyPair(self.security.public, self.security.secret))
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self.mesh.publish(NOTICE_TOPIC, {"reset": True, "owner": self.public_key})

    async def on_stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    # ---- who asks, and may they ------------------------------------------------------------

    def _reload_clients(self) -> bool:
        path = self.home.clients
        try:
            st = path.stat()
            sig: Any = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig == self._clients_sig:
            return False
        self._clients_sig = sig
        try:
            reg = ClientRegistry.load(path) if sig is not None else ClientRegistry()
        except (Error, OSError, ValueError) as exc:
            log.error("keeping the previous OAuth2 clients: %s", exc)
            return False
        self._clients = {c.curve_public: c for c in reg._clients.values()}
        return True

    def _principal(self, key: bytes) -> Principal | None:
        """The RBAC principal the router would build for this key's token, or None when
        the key is not enrolled, revoked, or bound to no OAuth2 client."""
        try:
            z85 = normalize_key(key)
        except Error:
            return None
        client = self._clients.get(z85)
        if client is None or not self.trust.is_trusted(z85):
            return None
        return Principal(sub=client.client_id, key=z85.decode(), roles=client.roles)

    def _refuse(self, reason: str, exc: Error) -> Error:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return exc

    @action(name="topic_key", inline=True)
    def topic_key(self, data: Any, ctx: Context) -> Any:
        caller = bytes(ctx.reply_to)
        if not caller:  # require_e2e refuses these before; kept as a second lock
            raise self._refuse("unsealed", Unauthenticated("ask for topic keys with e2e on"))
        if not isinstance(data, dict) or data.get("role") not in ROLES \
                or not isinstance(data.get("topic"), str):
            raise self._refuse("malformed", Malformed("want {topic: str, role: publish|subscribe}"))
        topic, role = data["topic"], data["role"]
        self._review()  # decide on the files as they are now
        principal = self._principal(caller)
        if principal is None:
            raise self._refuse("unknown_key", Unauthenticated("key not enrolled or revoked"))
        decision = self.rbac.check(principal, role, topic)
        if not decision.allowed:
            log.info("topic key refused: %s %s %r: %s", principal.sub, role, topic,
                     decision.reason)
            raise self._refuse("forbidden", Forbidden(f"no {role} right on {topic!r}: "
                                                      f"{decision.reason}"))
        assert self.owner is not None
        key = normalize_key(caller)
        if self.owner.current(topic) is None:
            begun = self._begun.get(key, 0)
            if len(self.owner.topics()) >= self.max_topics \
                    or begun >= self.max_new_topics_per_key:
                # memory a caller can make this service hold is bounded, per key and in all
                raise self._refuse("too_many_topics", Overloaded(
                    f"no key for a new topic: {len(self.owner.topics())} topics have keys, "
                    f"{begun} of them begun by this key"))
            self._begun[key] = begun + 1
            self.owner.rotate(topic)
        self.holders.setdefault(topic, {}).setdefault(key, set()).add(role)
        return {"owner": self.public_key, "generation": self.owner.current(topic),
                "grant": self.owner.grant(topic, caller, role), "lease": self.lease}

    @action(inline=True)
    def stats(self, data: Any, ctx: Context) -> Any:
        return {"topics": len(self.holders), "rotations": self.rotations,
                "holders": sum(len(h) for h in self.holders.values()), "refused": self.refused}

    # ---- rotation ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                self._review()
            except Exception:
                log.exception("topic key review failed")

    def _review(self) -> None:
        """When the policy, trust store or clients changed: drop rights holders lost, and
        rotate every topic a reader left, so it cannot open what follows."""
        changed = self.rbac.maybe_reload()
        changed = bool(self.trust.refresh()) or changed
        changed = self._reload_clients() or changed
        if not changed or self.owner is None:
            return
        for topic, holders in list(self.holders.items()):
            reader_left = False
            for key, roles in list(holders.items()):
                p = self._principal(key)
                kept = {r for r in roles if p is not None and self.rbac.check(p, r, topic)}
                reader_left |= "subscribe" in roles and "subscribe" not in kept
                if kept:
                    holders[key] = kept
                else:
                    del holders[key]
            if reader_left:
                generation = self.owner.rotate(topic)
                self.rotations += 1
                log.info("topic %r rotated to generation %d: a reader lost the right",
                         topic, generation)
                self.mesh.publish(NOTICE_TOPIC, {"topic": topic, "generation": generation,
                                                 "owner": self.public_key})
            if not holders:
                del self.holders[topic]


def main() -> int:
    return TopicKeyService.main()


if __name__ == "__main__":
    raise SystemExit(main())
