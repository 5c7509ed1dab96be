"""Pub/sub inside the client core: the subscriber side (publishing: :mod:`mesh.publishing`).

Publishes are batched under the hood; each message stays one message for the subscriber:
batching is invisible to user code.

Subscribing: a SUB socket connected to the router's XPUB. ``subscribe()`` returns once the
router confirmed the subscription (SUBACK), so a publish made after it is delivered. Each
batch carries the topic's sequence number; a gap means the router's high-water mark dropped
messages for this subscriber, and the subscription learns how many (``gaps``), as it does
when its own bounded queue overflows (``dropped``). A prefix nothing here already heard
starts its topics' numbering afresh at its SUBACK: messages read before it (left in the
socket by an earlier subscription) skip what was published while nobody here listened.
A prefix stays subscribed on the socket until every SUBACK owed for it came: one answering
a ``subscribe()`` that timed out would otherwise confirm the next one of that prefix while
the router still had the timed-out one's UNSUBSCRIBE to process, and lose what came between.
A SUBACK still owed ``suback_grace`` after its SUBSCRIBE, with no ``subscribe()`` waiting, is
taken as dropped by the router's XPUB (a full queue drops it silently; counted
``pubsub_suback_missing``): the UNSUBSCRIBEs held for it go.

Messages can also die with a router (SIGKILL with batches inside it, or published to a
restarted router before this subscriber's subscription was back): the router's numbering
restarts with it, so it cannot tell. So every batch also carries its publisher's own
numbering per topic (header frame: publisher id, first number), and a subscriber that sees
a publisher skip numbers the router did not account for counts them in ``lost``.

End to end (``crypto`` set by ``AsyncMesh.connect(e2e=True)``, see security/topic_key_client.py):
each batch frame leaves sealed with its topic's key (flag ENCRYPTED), one seal per batch;
sealed frames are opened before unbatching, and one that cannot be opened is counted in
``unopened`` by reason (and in the subscription's ``refused``), never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from mesh import codec
from mesh.drop_reasons import retire
from mesh.errors import Closed, DeadlineExceeded, Error, Malformed
from mesh.pub_numbering import MAX_TRACKED, PubNumbering
from mesh.publishing import Publishing
from mesh.subscription import MAX_BATCH, MAX_BATCH_BYTES, Message, Subscription, unbatch
from mesh.wire import MAX_ADDRESS_BYTES, ROUTE, Cmd, Flag
from mesh.zmqio import readable, recv_frames

__all__ = ["MAX_BATCH", "MAX_BATCH_BYTES", "SUBACK_GRACE", "Message", "SubscriberSide",
           "Subscription"]

SUBACK_GRACE = 30.0  # seconds a SUBACK no subscribe() waits for may still come

if TYPE_CHECKING:
    from mesh.core import Core
    from proto.agp_pb2 import Welcome

log = logging.getLogger("agp.pubsub")


class SubscriberSide(Publishing):
    """The SUB socket, the SUBACK handshake and sequence tracking for one core (and its
    publishing, :class:`mesh.publishing.Publishing`)."""

    RESUBSCRIBES_ON_RESTART = True  # subscriptions survive a router restart (see on_session)

    def __init__(self, core: Core) -> None:
        self.core = core
        self.sock: zmq.Socket[Any] | None = None
        self.endpoint = ""
        self.subs: dict[bytes, list[Subscription]] = {}
        # what closed subscriptions lost, (topic, reason) -> n: exported counters only grow;
        # a subscription leaves ``subs`` for it under ``tally_lock`` (the scrape's too)
        self.retired: dict[tuple[str, str], int] = {}
        self.tally_lock = threading.Lock()
        self._acks: dict[bytes, list[asyncio.Future[None]]] = {}
        # SUBACKs owed per prefix (one per SUBSCRIBE this socket sent) and the socket's
        # UNSUBSCRIBEs held until they came (see _answered)
        self._owed: dict[bytes, int] = {}
        self._held: dict[bytes, int] = {}
        self._asked: dict[bytes, float] = {}  # prefix -> when its last owed SUBSCRIBE went
        self.suback_grace = SUBACK_GRACE  # (a test may lower it)
        # prefixes nothing confirmed here heard when subscribed: numbering restarts at their
        # SUBACK (what the socket holds before it is older; see _dispatch)
        self._fresh: set[bytes] = set()
        self.numbering = PubNumbering(MAX_TRACKED)  # (read now: a test may lower the bound)
        self.gaps = 0
        self.lost = 0
        self.crypto: Any = None  # security.topic_key_client.TopicKeyClient when e2e is on
        self.unopened: dict[str, int] = {}  # sealed messages not opened, by reason
        self._drain_scheduled = False
        self._init_publishing()

    def count(self, name: str, n: int) -> None:
        self.core.counters[name] = self.core.counters.get(name, 0) + n

    # ------------------------------------------------------------------ subscribing
    def on_session(self, welcome: Welcome, restarted: bool) -> None:
        endpoint = welcome.pub_endpoint
        host = self.core.endpoint.rsplit(":", 1)[0]
        if "://0.0.0.0:" in endpoint or "://*:" in endpoint:
            endpoint = host + ":" + endpoint.rsplit(":", 1)[1]
        if restarted:
            self.numbering.restart()
        if self.sock is not None and endpoint != self.endpoint:
            # the router's pub/sub moved (restarted on another port, say): libzmq would
            # retry the old endpoint for ever, so a new socket joins the new one and takes
            # every subscription along (a subscribe() still waiting gets its SUBACK there)
            self._close_socket()
            self.numbering.restart()  # another proxy's numbering: no gap against the old one
            self.endpoint = endpoint
            self._held.clear()  # (the old socket's; the new one subscribes only these)
            self._owed = {prefix: len(subs) for prefix, subs in self.subs.items()}
            self._asked = dict.fromkeys(self.subs, self._now())
            if self.subs:
                sock = self._ensure_socket()
                for prefix, subs in self.subs.items():
                    for _ in subs:  # libzmq counts per prefix: one per Subscription, as
                        sock.setsockopt(zmq.SUBSCRIBE, prefix)  # each close takes one
                self._schedule_drain()
            return
        self.endpoint = endpoint
        if restarted and self.sock is not None:
            # libzmq re-sent our subscriptions on reconnect, before the new router knew this
            # session, so RBAC refused them: send them again now that it does
            self._owed = dict.fromkeys(self.subs, 1)  # the old router's SUBACKs died with it
            self._asked = dict.fromkeys(self.subs, self._now())
            for prefix in list(self.subs):
                self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
            for prefix in [p for p in self._held if p not in self._owed]:  # (nothing to await)
                for _ in range(self._held.pop(prefix)):
                    self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)

    def _ensure_socket(self) -> zmq.Socket[Any]:
        if self.sock is not None:
            return self.sock
        core = self.core
        sock = core.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, core.hwm)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if core.security is not None:
            core.security.apply(sock)
        sock.connect(self.endpoint)
        assert core.loop is not None
        core.loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)
        self.sock = sock
        return sock

    async def subscribe(self, prefix: bytes, callback: Callable[[Message], Any] | None,
                        raw: bool, timeout: float) -> Subscription:
        if len(prefix) > MAX_ADDRESS_BYTES:
            raise Malformed(f"topic prefix longer than {MAX_ADDRESS_BYTES} bytes")
        if not self.endpoint:
            raise Closed("no session with the router yet")
        sub = Subscription(prefix, callback, self.core.sub_queue, raw)
        sub.bind_loop(self.core.loop, self._unsubscribe)
        sock = self._ensure_socket()
        assert self.core.loop is not None
        ack: asyncio.Future[None] = self.core.loop.create_future()
        self._acks.setdefault(prefix, []).append(ack)
        if not prefix.startswith(self._heard()):
            self._fresh.add(prefix)
        self.subs.setdefault(prefix, []).append(sub)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self._owed[prefix] = self._owed.get(prefix, 0) + 1
        self._asked[prefix] = self._now()
        self._schedule_drain()
        try:
            await asyncio.wait_for(ack, timeout)
        except asyncio.TimeoutError:
            self._given_up(sub, ack)
            raise DeadlineExceeded(f"subscription to {prefix!r} not confirmed within {timeout}s")
        except (Error, asyncio.CancelledError):  # (cancelled: the caller never gets ``sub``,
            self._given_up(sub, ack)  # so it could never close it)
            raise
        return sub

    def _given_up(self, sub: Subscription, ack: asyncio.Future[None]) -> None:
        waiting = self._acks.get(sub.prefix)
        if waiting is not None and ack in waiting:
            waiting.remove(ack)
            if not waiting:
                del self._acks[sub.prefix]
        self._unsubscribe(sub)

    def _now(self) -> float:
        return self.core.loop.time() if self.core.loop is not None else 0.0

    def _unsubscribe(self, sub: Subscription) -> None:
        lst = self.subs.get(sub.prefix)
        if lst is not None and sub in lst:
            with self.tally_lock:
                lst.remove(sub)
                retire(self.retired, sub)
            if sub.prefix in self._owed:  # its SUBACK may still come: see _answered
                self._held[sub.prefix] = self._held.get(sub.prefix, 0) + 1
            elif self.sock is not None:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, sub.prefix)
            if not lst:
                del self.subs[sub.prefix]
                self._fresh.discard(sub.prefix)
                self.numbering.forget(sub.prefix, tuple(self.subs))

    def _heard(self, but: bytes | None = None) -> tuple[bytes, ...]:
        """Prefixes the router confirmed (or that a confirmed one covered when subscribed):
        their topics have reached this socket without a break."""
        fresh = self._fresh
        return tuple(p for p in self.subs if p != but and p not in fresh)

    def _answered(self, prefix: bytes) -> None:
        """A SUBSCRIBE of ``prefix`` was answered. Until all are, this socket keeps the prefix
        (a close holds its UNSUBSCRIBE), so the router does not unsubscribe it while one of
        our SUBACKs is on the way, and any SUBACK read confirms what the router still has."""
        owed = self._owed.pop(prefix, 0)  # (0: none owed; one libzmq re-sent, say)
        if owed > 1:
            self._owed[prefix] = owed - 1
        elif owed:
            self._release(prefix)

    def _release(self, prefix: bytes) -> None:
        """No SUBACK owed for ``prefix`` any more: the UNSUBSCRIBEs held for it go."""
        self._asked.pop(prefix, None)
        for _ in range(self._held.pop(prefix, 0)):
            if self.sock is not None:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)

    def _missing(self, now: float) -> None:
        """SUBACKs owed past ``suback_grace`` that no ``subscribe()`` waits for were dropped
        (an XPUB drops silently for a full queue) and never come: the prefix held only for
        them would stay subscribed at the router for ever, with nobody here for it."""
        late = now - self.suback_grace
        for prefix in [p for p in self._held
                       if p not in self._acks and self._asked.get(p, now) < late]:
            self.count("pubsub_suback_missing", self._owed.pop(prefix, 0))
            self._release(prefix)

    def refused(self, prefix: bytes, exc: Error) -> None:
        """The router refused a subscription (FORBIDDEN): fail its waiters."""
        self._answered(prefix)
        for fut in self._acks.pop(prefix, []):
            if not fut.done():
                fut.set_exception(exc)

    def _on_readable(self) -> None:
        self._drain_scheduled = False
        sock = self.sock
        if sock is None:
            return
        for _ in range(1000):
            try:
                msg = recv_frames(sock)
            except zmq.ZMQError:
                return
            try:
                self._dispatch(msg)
            except Exception:
                self.core.counters["malformed"] += 1
                log.debug("pub/sub message dropped", exc_info=True)
        self._schedule_drain(force=True)

    def _schedule_drain(self, force: bool = False) -> None:
        sock = self.sock
        if self._drain_scheduled or sock is None or self.core.loop is None:
            return
        if force or readable(sock):
            self._drain_scheduled = True
            self.core.loop.call_soon(self._on_readable)

    def _dispatch(self, msg: list[bytes]) -> None:
        if len(msg) < 2 or len(msg[1]) != 16:
            self.core.counters["malformed"] += 1
            return
        topic = msg[0]
        _, cmd, flags, _, count, seq = ROUTE.unpack(msg[1])
        if cmd == Cmd.SUBACK:
            if topic in self._fresh:
                # from here on the router sends this socket every topic under the prefix;
                # what was read before (still waiting from an earlier subscription, say)
                # left numbering that skips what was published while nobody here listened
                self._fresh.discard(topic)
                self.numbering.forget(topic, self._heard(but=topic))
            self.numbering.confirmed(topic, seq)
            self._answered(topic)
            for fut in self._acks.pop(topic, []):
                if not fut.done():
                    fut.set_result(None)
            return
        if cmd == Cmd.HEARTBEAT:  # the router's beacon: the topic's latest sequence number
            missed = self.numbering.beacon(topic, seq)
            if missed:
                self._charge(topic, missed, 0)
            return
        if cmd != Cmd.PUBLISH:
            return
        missed, lost = self.numbering.published(topic, seq, count, msg[2])
        if missed or lost:
            self._charge(topic, missed, lost)
        if flags & Flag.ENCRYPTED:
            if self.crypto is None:
                self.refuse(topic, count, "no_topic_key", None)
            elif len(msg) != 4:
                self.refuse(topic, count, "malformed", None)
            else:
                self.crypto.incoming(topic, flags, count, msg[3])
            return
        try:
            self.fanout(topic, flags, count, msg[3:])
        except (Error, ValueError):  # undecodable: every message the PUBLISH carried
            self.refuse(topic, count, "malformed", None)

    def refuse(self, topic: bytes, count: int, reason: str, exc: Error | None) -> None:
        """Messages that could not be read (sealed ones: not opened): counted by reason,
        here, in the core's counters and on each matching subscription; a refused key fails
        the subscription."""
        self.unopened[reason] = self.unopened.get(reason, 0) + count
        self.count(f"pubsub_refused_{reason}", count)
        for prefix, subs in self.subs.items():
            if topic.startswith(prefix):
                for s in subs:
                    s.refused[reason] = s.refused.get(reason, 0) + count
                    if reason == "forbidden" and exc is not None:
                        s.fail(exc)

    def fanout(self, topic: bytes, flags: int, count: int, payload: list[bytes]) -> None:
        """Unbatch (or decode) one PUBLISH and hand its messages to matching subscriptions."""
        raw = flags & Flag.RAW
        if flags & Flag.ENCRYPTED and not flags & Flag.BATCH:  # frames sealed as one
            frames = msgpack.unpackb(payload[0], max_array_len=512)
            if not isinstance(frames, list) or not all(type(f) is bytes for f in frames):
                raise Malformed("a sealed message is an array of frames")
            payload = frames
        if flags & Flag.BATCH:
            items = unbatch(payload, count, bool(raw))
        else:
            items = [payload[0] if raw and len(payload) == 1 else codec.decode(payload)]
        name = topic.decode(errors="replace")
        # a snapshot per PUBLISH: a callback may close a subscription (its own or another),
        # which takes it out of these; one closed meanwhile gets nothing more
        for prefix, subs in tuple(self.subs.items()):
            if topic.startswith(prefix):
                for s in tuple(subs):
                    if not s.closed:
                        s.deliver(name, items)

    def _charge(self, topic: bytes, missed: int, lost: int) -> None:
        """What the numbering showed missing: router gaps and messages lost on the way, here
        and on each subscription to the topic."""
        self.gaps += missed
        if lost:
            self.lost += lost
            self.count("pubsub_lost_in_transit", lost)
        for prefix, subs in self.subs.items():
            if topic.startswith(prefix):
                for s in subs:
                    s.gaps += missed
                    s.lost += lost

    def tick(self, now: float) -> None:
        if self._held:
            self._missing(now)
        self._schedule_drain()

    def _close_socket(self) -> None:
        if self.sock is not None:
            if self.core.loop is not None:
                try:
                    self.core.loop.remove_reader(self.sock.getsockopt(zmq.FD))
                except Exception:
                    pass
            self.sock.close(linger=0)
            self.sock = None

    def close(self) -> None:
        self.flush()
        for subs in self.subs.values():
            for s in subs:
                s.closed = True
                s._wake()
        with self.tally_lock:
            for subs in self.subs.values():
                for s in subs:
                    retire(self.retired, s)
            self.subs.clear()
        self._fresh.clear()
        self._owed.clear()
        self._held.clear()
        self._asked.clear()
        self._close_socket()
