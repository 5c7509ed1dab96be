"""The pub/sub fan-out: an XPUB socket that subscribers connect to.

Publishers send PUBLISH over their authenticated DEALER connection (so a refusal reaches
them as FORBIDDEN and nothing is lost while a PUB socket would still be joining); the
router hands each batch here. Subscriptions arrive on the XPUB in manual mode
(XPUB_MANUAL): one takes effect only when the access layer allows it, and then a SUBACK is
sent on that topic, so a client whose ``subscribe()`` returned gets every later publish.

Every outgoing batch carries the topic's sequence number (first message of the batch) in
the route frame; a subscriber that sees a gap knows exactly how many messages its
high-water mark dropped. libzmq drops for a slow subscriber only, never blocking the rest.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from mesh.subscription import MAX_BATCH
from mesh.wire import MAX_ADDRESS_BYTES, ROUTE, Cmd
from mesh.zmqio import send_frames
from router.access import Access
from router.stats import RouterStats

log = logging.getLogger("agp.proxy")

BEACONS = 10  # seconds a topic's sequence keeps being announced after its last publish
MAX_TOPICS = 100_000  # sequence counters kept; past it they restart (seen as a reset, not a gap)


class PubSubProxy:
    def __init__(
        self, sock: zmq.Socket[Any], access: Access, stats: RouterStats, on_denied: Any = None
    ) -> None:
        self.sock = sock
        self.access = access
        self.stats = stats
        self.on_denied = on_denied  # callable(identity, topic) to tell the client why
        self._seq: dict[bytes, int] = {}
        # topics published to lately -> beacons still to send: XPUB drops a beacon silently
        # for a subscriber whose pipe is full, so each topic is beaconed a few times
        self._active: dict[bytes, int] = {}
        self.subscriptions = 0

    def publish(self, topic: bytes, route: bytes, frames: list[bytes]) -> None:
        """Forward one PUBLISH (frames = [route, topic, header, *payloads], route parsed)."""
        _, _, flags, _, value, _ = ROUTE.unpack(route)
        if value > MAX_BATCH:  # no batch holds more: its numbers would skip, and every
            self.stats.refuse("publish_count")  # subscriber would count a false gap
            return
        count = value if value > 0 else 1
        seq_map = self._seq
        seq = seq_map.get(topic, 0)
        if seq == 0 and len(seq_map) >= MAX_TOPICS:
            seq_map.clear()
        seq_map[topic] = seq + count
        self._active[topic] = BEACONS
        frames[0] = topic
        frames[1] = ROUTE.pack(1, Cmd.PUBLISH, flags, 0, count, seq + 1)
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            self.stats.drop("pub_hwm", count)
        self.stats.publishes += 1
        self.stats.published_messages += count

    def beacon(self) -> None:
        """Tell subscribers each active topic's latest sequence number (once a second), so a
        subscriber whose last messages were dropped learns of that gap too."""
        active = self._active
        for topic, left in list(active.items()):
            try:
                send_frames(self.sock, [topic, ROUTE.pack(1, Cmd.HEARTBEAT, 0, 0, 0,
                                                          self._seq.get(topic, 0))])
            except zmq.Again:
                continue
            if left <= 1:
                del active[topic]
            else:
                active[topic] = left - 1

    def drain(self, secure: bool, max_messages: int = 1000) -> None:
        """Handle subscription messages waiting on the XPUB socket."""
        sock = self.sock
        for _ in range(max_messages):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            data = frame.bytes
            if not data or data[0] not in (0, 1) or len(data) - 1 > MAX_ADDRESS_BYTES:
                self.stats.refuse("bad_subscription")
                continue
            topic = data[1:]
            if data[0] == 0:
                sock.setsockopt(zmq.UNSUBSCRIBE, topic)
                self.subscriptions = max(0, self.subscriptions - 1)
                continue
            identity: str | None = None
            if secure:
                try:
                    identity = frame.get("User-Id")
                except zmq.ZMQError:
                    identity = None
                if identity is None or not self.access.allowed_prefix(identity, topic):
                    self.stats.denials["subscribe"] += 1
                    log.warning("subscription to %r refused for %s", topic, identity)
                    if self.on_denied is not None:
                        self.on_denied(identity, topic)
                    continue
            sock.setsockopt(zmq.SUBSCRIBE, topic)
            self.subscriptions += 1
            try:
                sock.send_multipart(
                    [topic, ROUTE.pack(1, Cmd.SUBACK, 0, 0, 0, self._seq.get(topic, 0))],
                    zmq.NOBLOCK,
                )
            except zmq.Again:
                self.stats.drop("suback_hwm")
