"""The client half of pub/sub end to end: topic keys from ``agp/system/keys``, batches
sealed and opened with them.

``AsyncMesh.connect(e2e=True)`` (and an agent with an identity) attaches a
:class:`TopicKeyClient` to its pub/sub side: one seal per batch frame, keys fetched on first
use and on unknown generations or notices (``NOTICE_TOPIC``, published by the service when a
topic rotates or the service restarts), a publisher's key fetched again within its lease,
batches held (bounded) while a key is on its way, and every frame that cannot be opened
counted by reason (and a refused key raised on the subscription). A notice that comes while
the topic's key is on its way marks that fetch stale: the service may have answered before it
rotated, so unless the reply has the announced generation it is not sealed with and another
fetch follows (else a publisher's lease re-fetch could bring back the key of a reader just
removed, and keep it for most of a lease). The service itself is ``security.key_service``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from mesh.errors import Error, Forbidden, Malformed, Replayed, Unauthenticated
from security.e2e import OpenError
from security.topic_keys import NoTopicKey, TopicMember

log = logging.getLogger("agp.topic_keys")

KEY_SERVICE: Final = "agp/system/keys"
NOTICE_TOPIC: Final = "agp.system.topickeys"
MAX_HELD_BATCHES: Final = 1024  # per topic, while its key is on the way
DENIED_SECONDS: Final = 5.0  # a refused key is not asked for again sooner
RETRY_SECONDS: Final = 1.0  # nor a key the service could not be reached for


class TopicKeyClient:
    """The e2e half of one client's pub/sub (runs on the core's loop; see the module doc)."""

    def __init__(self, amesh: Any) -> None:
        self.amesh = amesh
        self.subs = amesh.core.subs
        self.member = TopicMember(amesh.e2e.keypair)
        self.owner: bytes | None = None
        self.roles: dict[str, set[str]] = {}
        self._refresh_at: dict[str, float] = {}  # publisher leases: fetch again after
        self._fetching: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._stale: dict[tuple[str, str], Any] = {}  # fetches a notice overtook: its generation
        self._denied: dict[tuple[str, str], tuple[float, Error]] = {}
        self._held_out: dict[str, list[tuple[int, int, bytes]]] = {}
        self._held_in: dict[str, list[tuple[int, int, bytes]]] = {}
        self._notices: asyncio.Task[Any] | None = None
        self.notices_seen = 0

    # ---- fetching ---------------------------------------------------------------------------

    def _loop_time(self) -> float:
        return self.subs.core.loop.time()  # type: ignore[no-any-return]

    def fetch(self, topic: str, role: str) -> asyncio.Task[Any]:
        """The in-flight fetch of ``topic``'s key for ``role`` (one at a time per pair)."""
        task = self._fetching.get((topic, role))
        if task is None:
            task = self.subs.core.loop.create_task(self._fetch(topic, role))
            self._fetching[(topic, role)] = task
        return task

    async def _fetch(self, topic: str, role: str) -> None:
        again = False
        try:
            reply = await self.amesh.request(KEY_SERVICE, "topic_key",
                                             {"topic": topic, "role": role}, timeout=5.0)
            owner = str(reply["owner"]).encode()
            if self.owner is not None and owner != self.owner:
                self.member.forget()  # a new key service: what the old one gave is void
            self.owner = owner
            grant = self.member.accept(owner, reply["grant"])
            again = self._overtaken(topic, role, grant.generation)
            self.roles.setdefault(topic, set()).add(role)
            self._refresh_at[topic] = self._loop_time() + 0.8 * float(reply.get("lease", 60))
            self._denied.pop((topic, role), None)
            self._ensure_notices()
        except Error as exc:
            wait = DENIED_SECONDS if isinstance(exc, (Forbidden, Unauthenticated)) \
                else RETRY_SECONDS
            self._denied[(topic, role)] = (self._loop_time() + wait, exc)
            log.warning("no %s key for %r: %s", role, topic, exc)
        except (KeyError, TypeError, ValueError) as exc:
            self._denied[(topic, role)] = (self._loop_time() + DENIED_SECONDS,
                                           Malformed(f"bad topic key reply: {exc}"))
        finally:
            self._stale.pop((topic, role), None)
            self._fetching.pop((topic, role), None)
            if again:  # before the release: what waits for this key waits for the next one
                self.fetch(topic, role)
            self._release(topic)

    def _overtaken(self, topic: str, role: str, generation: int) -> bool:
        """Whether a notice of another generation came while this fetch was on its way
        (then what it brought may be the key the rotation retired: not sealed with)."""
        if (topic, role) not in self._stale or self._stale[(topic, role)] == generation:
            return False
        self.member.publishing.pop(topic, None)
        self.subs.count("e2e_key_refetched_after_notice", 1)
        return True

    def denied(self, topic: str, role: str) -> Error | None:
        hit = self._denied.get((topic, role))
        if hit is None or hit[0] < self._loop_time():
            return None
        return hit[1]

    async def settle(self, timeout: float) -> None:
        """Wait until no key is on its way (held batches have left or were counted)."""
        deadline = self._loop_time() + timeout
        while self._fetching and self._loop_time() < deadline:
            await asyncio.wait(list(self._fetching.values()),
                               timeout=max(0.0, deadline - self._loop_time()))

    async def prefetch(self, topic: str) -> None:
        """Fetch the subscribe key of an exact topic now, so its first message opens at once."""
        if topic.startswith("agp.") or topic.endswith(".") or not topic:
            return
        await asyncio.wait([self.fetch(topic, "subscribe")], timeout=5.0)

    def close(self) -> list[asyncio.Task[Any]]:
        """The client is closing: stop what is still on its way (returns the tasks, for the
        caller to await their end)."""
        tasks = [t for t in [*self._fetching.values(), self._notices]
                 if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        self._fetching.clear()
        return tasks

    def _ensure_notices(self) -> None:
        if self._notices is None:
            self._notices = self.subs.core.loop.create_task(self._subscribe_notices())

    async def _subscribe_notices(self) -> None:
        try:
            await self.amesh.subscribe(NOTICE_TOPIC, self._on_notice)
        except Error as exc:  # without notices the publishers' lease still bounds staleness
            self.subs.count("e2e_notices_unavailable", 1)
            log.warning("rotation notices unavailable (leases only): %s", exc)

    def _on_notice(self, msg: Any) -> None:
        data = msg.data
        if not isinstance(data, dict):
            return
        self.notices_seen += 1
        owner = str(data.get("owner", "")).encode()
        if data.get("reset"):
            if self.owner is not None and owner != self.owner:  # a new service (or a
                self.member.forget()  # forged notice: then we merely fetch again)
                self._refresh_at.clear()
                self.owner = None
            return
        topic = data.get("topic")
        if not isinstance(topic, str):
            return
        on_the_way = [r for t, r in self._fetching if t == topic]
        if topic not in self.roles and not on_the_way:
            return
        generation = data.get("generation")
        for role in on_the_way:  # (even if the announced one is held: the reply may be older)
            self._stale[(topic, role)] = generation
        if self.member.generation(topic) == generation:
            return
        self.member.publishing.pop(topic, None)  # nothing more under the old public key
        for role in self.roles.get(topic, ()):
            self._denied.pop((topic, role), None)
            self.fetch(topic, role)

    # ---- publishing -------------------------------------------------------------------------

    def check_publish(self, topic: bytes) -> None:
        """Raise why publishing to ``topic`` is refused, if its key was lately."""
        exc = self.denied(topic.decode(errors="replace"), "publish")
        if exc is not None:
            raise exc

    def outgoing(self, topic: bytes, flags: int, count: int, body: bytes) -> list[Any] | None:
        """The sealed PUBLISH frames for a batch body, or None when it waits for its key."""
        name = topic.decode(errors="replace")
        held = self._held_out.get(name)
        if held is None and name in self.member.publishing:
            if self._loop_time() >= self._refresh_at.get(name, 0.0):
                self.fetch(name, "publish")  # lease: fetch again, go on meanwhile
            return self._sealed(name, topic, flags, count, body)
        if held is None:
            held = self._held_out[name] = []
            self.fetch(name, "publish")
        if len(held) >= MAX_HELD_BATCHES:
            self.subs.count("publish_dropped", count)
            self.subs.count("publish_dropped_e2e_held_full", count)
            return None
        held.append((flags, count, body))
        return None

    def _sealed(self, name: str, topic: bytes, flags: int, count: int, body: bytes) -> list[Any]:
        from mesh.wire import Cmd, Flag, pack_route

        return [pack_route(Cmd.PUBLISH, flags | Flag.ENCRYPTED, 0, count, 0), topic, b"",
                self.member.seal(name, body)]

    def _release(self, name: str) -> None:
        """A fetch ended: send (or count as dropped) the batches that waited for it, in
        order, and try again the frames that waited for a key."""
        held = None if (name, "publish") in self._fetching else self._held_out.pop(name, None)
        if held:
            ok = name in self.member.publishing
            for flags, count, body in held:
                if ok:
                    self.subs.enqueue(self._sealed(name, name.encode(), flags, count, body))
                else:
                    self.subs.count("publish_dropped", count)
                    self.subs.count("publish_dropped_e2e_no_key", count)
            if not ok:
                log.warning("%d publish batches to %r dropped: %s", len(held), name,
                            self.denied(name, "publish"))
        waiting = None if (name, "subscribe") in self._fetching else self._held_in.pop(name, None)
        for flags, count, blob in waiting or ():
            self.incoming(name.encode(), flags, count, blob, retry=True)

    # ---- subscribing ------------------------------------------------------------------------

    def incoming(self, topic: bytes, flags: int, count: int, blob: bytes, *,
                 retry: bool = False) -> None:
        """Open a sealed frame and hand it on; hold it while its key is fetched; count it
        with its reason when it cannot be opened (``retry``: its fetch already ended)."""
        name = topic.decode(errors="replace")
        held = self._held_in.get(name)
        if held is not None:  # keep the order behind those already waiting
            self._hold(topic, count, blob, flags, held)
            return
        try:
            body = self.member.open(name, blob)
        except NoTopicKey as exc:
            denied = self.denied(name, "subscribe")
            if denied is not None:
                self.subs.refuse(topic, count, "forbidden" if isinstance(denied, Forbidden)
                                 else "key_unavailable", denied)
            elif retry:  # fetched, and that generation is still not ours: gone or not yet
                self.subs.refuse(topic, count, "stale_generation", exc)
            else:
                self.fetch(name, "subscribe")
                self._hold(topic, count, blob, flags, self._held_in.setdefault(name, []))
            return
        except Replayed as exc:
            self.subs.refuse(topic, count, "replayed", exc)
            return
        except OpenError as exc:
            self.subs.refuse(topic, count, "tampered", exc)
            return
        except Malformed as exc:
            self.subs.refuse(topic, count, "malformed", exc)
            return
        try:
            self.subs.fanout(topic, flags, count, [body])
        except Exception as exc:  # authentic but badly framed: the publisher's bug, counted
            self.subs.refuse(topic, count, "malformed", Malformed(str(exc)))

    def _hold(self, topic: bytes, count: int, blob: bytes, flags: int,
              held: list[tuple[int, int, bytes]]) -> None:
        if len(held) >= MAX_HELD_BATCHES:
            self.subs.refuse(topic, count, "held_full", Malformed("too much waits for a key"))
        else:
            held.append((flags, count, blob))
