"""Publishing inside the client core: consecutive publishes to one topic become one batch.

``publish()`` appends the encoded message to the current batch; consecutive publishes to the
same topic share one PUBLISH message (up to ``MAX_BATCH`` messages or ``MAX_BATCH_BYTES``),
flushed on the next loop turn. As in NATS's flusher, a burst becomes a few large messages and
a lone publish still leaves at once. Each batch is numbered per topic by this publisher
(``STAMP``: publisher id, first number) as it leaves, so a subscriber can tell a loss the
router did not count (:mod:`mesh.pub_numbering`). With end-to-end sealing each batch is
sealed once with its topic's key, or waits (bounded) for that key.

A mixin of :class:`mesh.pubsub.SubscriberSide`, which holds the core, the counters and the
topic-key client; apart because publishing and subscribing change for different reasons.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from mesh.errors import Error, Overloaded
from mesh.pub_numbering import MAX_TRACKED, STAMP
from mesh.subscription import MAX_BATCH, MAX_BATCH_BYTES
from mesh.wire import ROUTE, Cmd, Flag, pack_route

if TYPE_CHECKING:
    from mesh.core import Core

log = logging.getLogger("agp.pubsub")

_BATCH_RAW = int(Flag.BATCH | Flag.RAW)
_BATCH = int(Flag.BATCH)


class Publishing:
    """``publish``, ``publish_frames``, ``enqueue`` and ``flush`` for a core's pub/sub side."""

    # provided by SubscriberSide
    core: Core
    crypto: Any  # security.topic_key_client.TopicKeyClient when e2e is on
    count: Callable[[str, int], None]  # (name, n): adds to the core's counters

    def _init_publishing(self) -> None:
        self._batch_topic: bytes | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batch_raw = False
        self._queued: list[list[Any]] = []
        self._flush_scheduled = False
        self.publisher_id = os.urandom(8)
        self._pub_seq: dict[bytes, int] = {}  # topic -> messages sent to it so far

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

    def flush(self) -> None:
        self._flush_scheduled = False
        self._close_batch()
        queued, self._queued = self._queued, []
        pub_seq = self._pub_seq
        for frames in queued:
            topic = frames[1]
            seq = pub_seq.get(topic, 0)
            if seq == 0 and len(pub_seq) >= MAX_TRACKED:
                # every topic's numbering restarts: as a new publisher, or a subscriber
                # takes the numbers as already seen and a loss after them as none
                pub_seq.clear()
                self.publisher_id = os.urandom(8)
            frames[2] = STAMP.pack(self.publisher_id, seq + 1)
            try:
                self.core.send_frames(frames)
                pub_seq[topic] = seq + ROUTE.unpack(frames[0])[4]  # numbered once sent
            except Error as exc:
                n = ROUTE.unpack(frames[0])[4]
                log.warning("publish of %d messages dropped: %s", n, exc)
                self.count("publish_dropped", n)
                if not isinstance(exc, Overloaded):  # (the rest met a full queue)
                    self.count(f"publish_dropped_{exc.code.name.lower()}", n)
