"""Pub/sub inside the client core: publisher batching and the subscriber side.

Publishing: ``publish()`` appends the encoded message to the current batch; consecutive
publishes to the same topic share one PUBLISH message (up to ``MAX_BATCH`` messages or
``MAX_BATCH_BYTES``), flushed on the next loop turn. As in NATS's flusher, a burst becomes a
few large messages and a lone publish still leaves at once. Each message stays one message
for the subscriber: batching is invisible to user code.

Subscribing: a SUB socket connected to the router's XPUB. ``subscribe()`` returns once the
router confirmed the subscription (SUBACK), so a publish made after it is delivered. Each
batch carries the topic's sequence number; a gap means the router's high-water mark dropped
messages for this subscriber, and the subscription learns how many (``gaps``), as it does
when its own bounded queue overflows (``dropped``). A prefix nothing here already heard
starts its topics' numbering afresh at its SUBACK: messages read before it (left in the
socket by an earlier subscription) skip what was published while nobody here listened.

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
import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from mesh import codec
from mesh.drop_reasons import retire
from mesh.errors import Closed, DeadlineExceeded, Error, Malformed, Overloaded
from mesh.subscription import MAX_BATCH, MAX_BATCH_BYTES, Message, Subscription, unbatch
from mesh.wire import MAX_ADDRESS_BYTES, ROUTE, Cmd, Flag, pack_route
from mesh.zmqio import readable, recv_frames

__all__ = ["MAX_BATCH", "MAX_BATCH_BYTES", "Message", "SubscriberSide", "Subscription"]

if TYPE_CHECKING:
    from mesh.core import Core
    from proto.agp_pb2 import Welcome

log = logging.getLogger("agp.pubsub")

_BATCH_RAW = int(Flag.BATCH | Flag.RAW)
_BATCH = int(Flag.BATCH)
_STAMP = struct.Struct("<8sQ")  # a batch's header frame: publisher id, its first number
# numberings kept (per topic, per (topic, publisher)); past it they restart unseen, so a
# subscriber to per-job topics, or to publishers that restart, does not grow for ever
MAX_TRACKED = 100_000


class SubscriberSide:
    """The SUB socket, the SUBACK handshake and sequence tracking for one core."""

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
        # prefixes nothing confirmed here heard when subscribed: numbering restarts at their
        # SUBACK (what the socket holds before it is older; see _dispatch)
        self._fresh: set[bytes] = set()
        self._expected: dict[bytes, int] = {}
        self.gaps = 0
        self.lost = 0
        self._pub_next: dict[tuple[bytes, bytes], int] = {}  # (topic, publisher) -> number
        self._explained: dict[bytes, int] = {}  # router-counted gaps publishers still show
        self.crypto: Any = None  # security.topic_key_client.TopicKeyClient when e2e is on
        self.unopened: dict[str, int] = {}  # sealed messages not opened, by reason
        self._drain_scheduled = False
        # publisher side
        self._batch_topic: bytes | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_raw = False
        self._queued: list[list[Any]] = []
        self._flush_scheduled = False
        self.publisher_id = os.urandom(8)
        self._pub_seq: dict[bytes, int] = {}  # topic -> messages sent to it so far

    # ------------------------------------------------------------------ publishing
    def publish(self, topic: bytes, frame: bytes, raw: bool) -> None:
        """Queue one encoded message; it leaves on the next loop turn (or sooner if full)."""
        if self.crypto is not None:
            self.crypto.check_publish(topic)  # its key was refused lately: say so now
        if self._batch_topic != topic or self._batch_raw != raw:
            self._close_batch()
            self._batch_topic = topic
            self._batch_raw = raw
        self._batch.append(frame)
        self._batch_bytes += len(frame)
        if len(self._batch) >= MAX_BATCH or self._batch_bytes >= MAX_BATCH_BYTES:
            self._close_batch()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.core.loop is not None
            self.core.loop.call_soon(self.flush)

    def publish_frames(self, topic: bytes, frames: list[Any], flags: int) -> None:
        """A message of several frames (arrays) goes alone, in order with the batches."""
        self._close_batch()
        if self.crypto is not None:  # sealed as one frame: a msgpack array of the frames
            self.crypto.check_publish(topic)
            sealed = self.crypto.outgoing(topic, flags, 1, msgpack.packb(frames))
            if sealed is not None:
                self._queued.append(sealed)
        else:
            self._queued.append([pack_route(Cmd.PUBLISH, flags, 0, 1, 0), topic, b"", *frames])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.core.loop is not None
            self.core.loop.call_soon(self.flush)

    def _close_batch(self) -> None:
        if self._batch:
            flags = _BATCH_RAW if self._batch_raw else _BATCH
            assert self._batch_topic is not None
            # one frame per batch: raw messages as a msgpack array of bins; msgpack values
            # back to back (each is one complete msgpack object)
            body = msgpack.packb(self._batch) if self._batch_raw else b"".join(self._batch)
            if self.crypto is not None:  # one seal per batch; None: it waits for its key
                sealed = self.crypto.outgoing(self._batch_topic, flags, len(self._batch), body)
                if sealed is not None:
                    self._queued.append(sealed)
            else:
                self._queued.append([pack_route(Cmd.PUBLISH, flags, 0, len(self._batch), 0),
                                     self._batch_topic, b"", body])
            self._batch = []
            self._batch_bytes = 0

    def enqueue(self, frames: list[Any]) -> None:
        """A sealed batch whose key just arrived: out on the next flush, in order."""
        self._queued.append(frames)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.core.loop is not None
            self.core.loop.call_soon(self.flush)

    def count(self, name: str, n: int) -> None:
        self.core.counters[name] = self.core.counters.get(name, 0) + n

    def flush(self) -> None:
        self._flush_scheduled = False
        self._close_batch()
        queued, self._queued = self._queued, []
        pub_seq = self._pub_seq
        for frames in queued:
            topic = frames[1]
            seq = pub_seq.get(topic, 0)
            frames[2] = _STAMP.pack(self.publisher_id, seq + 1)
            try:
                self.core.send_frames(frames)
                if seq == 0 and len(pub_seq) >= MAX_TRACKED:
                    pub_seq.clear()
                pub_seq[topic] = seq + ROUTE.unpack(frames[0])[4]  # numbered once sent
            except Error as exc:
                n = ROUTE.unpack(frames[0])[4]
                log.warning("publish of %d messages dropped: %s", n, exc)
                self.count("publish_dropped", n)
                if not isinstance(exc, Overloaded):  # (the rest met a full queue)
                    self.count(f"publish_dropped_{exc.code.name.lower()}", n)

    # ------------------------------------------------------------------ subscribing
    def on_session(self, welcome: Welcome, restarted: bool) -> None:
        endpoint = welcome.pub_endpoint
        host = self.core.endpoint.rsplit(":", 1)[0]
        if "://0.0.0.0:" in endpoint or "://*:" in endpoint:
            endpoint = host + ":" + endpoint.rsplit(":", 1)[1]
        if restarted:
            self._expected.clear()
        if self.sock is not None and endpoint != self.endpoint:
            # the router's pub/sub moved (restarted on another port, say): libzmq would
            # retry the old endpoint for ever, so a new socket joins the new one and takes
            # every subscription along (a subscribe() still waiting gets its SUBACK there)
            self._close_socket()
            self._expected.clear()  # another proxy's numbering: no gap against the old one
            self.endpoint = endpoint
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
            for prefix in list(self.subs):
                self.sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self.sock.setsockopt(zmq.SUBSCRIBE, prefix)

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
        self._schedule_drain()
        try:
            await asyncio.wait_for(ack, timeout)
        except asyncio.TimeoutError:
            self._unsubscribe(sub)
            raise DeadlineExceeded(f"subscription to {prefix!r} not confirmed within {timeout}s")
        except Error:
            self._unsubscribe(sub)
            raise
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        lst = self.subs.get(sub.prefix)
        if lst is not None and sub in lst:
            with self.tally_lock:
                lst.remove(sub)
                retire(self.retired, sub)
            if self.sock is not None:
                self.sock.setsockopt(zmq.UNSUBSCRIBE, sub.prefix)
            if not lst:
                del self.subs[sub.prefix]
                self._fresh.discard(sub.prefix)
                self._forget_topics(sub.prefix, tuple(self.subs))

    def _heard(self, but: bytes | None = None) -> tuple[bytes, ...]:
        """Prefixes the router confirmed (or that a confirmed one covered when subscribed):
        their topics have reached this socket without a break."""
        fresh = self._fresh
        return tuple(p for p in self.subs if p != but and p not in fresh)

    def _forget_topics(self, prefix: bytes, heard: tuple[bytes, ...]) -> None:
        """Topics under ``prefix`` and none of ``heard`` were not all heard here: their
        numbering is forgotten, so a subscriber is not charged, as gaps, for what was
        published meanwhile. (startswith(()) is False: nothing heard, all forgotten.)"""
        for table in (self._expected, self._explained):
            for topic in [t for t in table if t.startswith(prefix) and not t.startswith(heard)]:
                del table[topic]
        for key in [k for k in self._pub_next
                    if k[0].startswith(prefix) and not k[0].startswith(heard)]:
            del self._pub_next[key]

    def refused(self, prefix: bytes, exc: Error) -> None:
        """The router refused a subscription (FORBIDDEN): fail its waiters."""
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
                self._forget_topics(topic, self._heard(but=topic))
            if topic not in self._expected:
                self._expected[topic] = seq + 1
            for fut in self._acks.pop(topic, []):
                if not fut.done():
                    fut.set_result(None)
            return
        if cmd == Cmd.HEARTBEAT:  # the router's beacon: the topic's latest sequence number
            expected = self._expected.get(topic)
            if expected is not None and seq + 1 > expected:
                self._count_gap(topic, seq + 1 - expected)
                self._expected[topic] = seq + 1
            return
        if cmd != Cmd.PUBLISH:
            return
        expected = self._expected.get(topic)
        if expected is not None and seq > expected:
            self._count_gap(topic, seq - expected)
        elif expected is None and len(self._expected) >= MAX_TRACKED:
            self._expected.clear()  # a topic per job: bounded as the router's; they restart
        self._expected[topic] = seq + count
        if len(msg[2]) == _STAMP.size:
            self._check_publisher(topic, msg[2], count)
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

    def _count_gap(self, topic: bytes, missed: int) -> None:
        self.gaps += missed
        known = self._explained.get(topic)
        if known is None and len(self._explained) >= MAX_TRACKED:
            self._explained.clear()
        self._explained[topic] = (known or 0) + missed
        for prefix, subs in self.subs.items():
            if topic.startswith(prefix):
                for s in subs:
                    s.gaps += missed

    def _check_publisher(self, topic: bytes, stamp: bytes, count: int) -> None:
        """A publisher's numbering skipped: what the router's gaps did not already count was
        lost on the way (with a killed router, or before a restarted one had our
        subscription) and is counted in ``lost``."""
        publisher, first = _STAMP.unpack(stamp)
        key = (topic, publisher)
        nxt = self._pub_next.get(key)
        if nxt is None and len(self._pub_next) >= MAX_TRACKED:
            self._pub_next.clear()
        if nxt is None or first + count > nxt:
            self._pub_next[key] = first + count
        if nxt is None or first <= nxt:
            return
        missing = first - nxt
        known = self._explained.get(topic, 0)
        if known:
            used = min(known, missing)
            if known > used:
                self._explained[topic] = known - used
            else:  # all shown: kept at zero it would stay for every topic ever gapped
                del self._explained[topic]
            missing -= used
        if missing:
            self.lost += missing
            self.count("pubsub_lost_in_transit", missing)
            for prefix, subs in self.subs.items():
                if topic.startswith(prefix):
                    for s in subs:
                        s.lost += missing

    def tick(self, now: float) -> None:
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
        self._close_socket()
