"""A subscriber's view of pub/sub numbering, fed plain values (no socket, no subscriptions).

Two numberings meet here. The router numbers each topic's messages (the route frame's
sequence, repeated by its beacons and SUBACKs): a skip is what its high-water mark dropped
for this subscriber, a *gap*. Each publisher numbers its own messages per topic (the
header frame, ``STAMP``): a skip the router's gaps do not account for died where the router
could not count it (a killed or restarted router) and is *lost*. Gaps this side counted are
kept per topic until a publisher's skip shows them, so the same messages are not counted
twice.

Every table is bounded by ``max_tracked``: past it a table restarts, and a topic it
forgot restarts its numbering unseen, as the router's own table does (a topic per job, or
publishers that restart, must not grow a long-lived subscriber for ever).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["MAX_TRACKED", "STAMP", "PubNumbering"]

STAMP: Final = struct.Struct("<8sQ")  # a batch's header frame: publisher id, its first number
MAX_TRACKED: Final = 100_000  # numberings kept per table (topics; (topic, publisher) pairs)


class PubNumbering:
    """Per-topic router numbering and per-(topic, publisher) numbering for one subscriber.

    Each method takes what one message said and returns how many messages it shows
    missed (router gaps) or lost; the caller charges them to its subscriptions. Tables are
    cleared in place, never replaced (the caller may hold them)."""

    __slots__ = ("expected", "explained", "max_tracked", "pub_next")

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self.expected: dict[bytes, int] = {}  # topic -> the router's next sequence number
        self.pub_next: dict[tuple[bytes, bytes], int] = {}  # (topic, publisher) -> number
        self.explained: dict[bytes, int] = {}  # router-counted gaps publishers still show

    def published(self, topic: bytes, seq: int, count: int, stamp: bytes) -> tuple[int, int]:
        """A PUBLISH of ``count`` messages, the first numbered ``seq`` by the router and
        stamped ``stamp`` (empty or foreign: no publisher numbering): (missed, lost)."""
        table = self.expected
        expected = table.get(topic)
        missed = 0
        if expected is not None:
            if seq > expected:
                missed = seq - expected
                self.explain(topic, missed)
        elif len(table) >= self.max_tracked:
            table.clear()  # a topic per job: bounded as the router's; they restart
        table[topic] = seq + count
        if len(stamp) != STAMP.size:
            return missed, 0
        publisher, first = STAMP.unpack(stamp)
        key = (topic, publisher)
        if self.pub_next.get(key) == first:  # in order, the common case: no second call
            self.pub_next[key] = first + count
            return missed, 0
        return missed, self.publisher(topic, stamp, count)

    def beacon(self, topic: bytes, seq: int) -> int:
        """The router's HEARTBEAT: ``seq`` is the topic's latest number. Returns the
        messages missed since the last one heard (a topic not followed here: none)."""
        expected = self.expected.get(topic)
        if expected is None or seq + 1 <= expected:
            return 0
        missed = seq + 1 - expected
        self.explain(topic, missed)
        self.expected[topic] = seq + 1
        return missed

    def confirmed(self, topic: bytes, seq: int) -> None:
        """A SUBACK at the topic's number ``seq``: numbering starts there unless already kept."""
        if topic not in self.expected:
            self.expected[topic] = seq + 1

    def explain(self, topic: bytes, missed: int) -> None:
        """Gaps the router's numbering showed: a publisher's skip over them is not lost."""
        table = self.explained
        known = table.get(topic)
        if known is None and len(table) >= self.max_tracked:
            table.clear()
        table[topic] = (known or 0) + missed

    def publisher(self, topic: bytes, stamp: bytes, count: int) -> int:
        """A publisher's numbering skipped: what the router's gaps did not already count was
        lost on the way (with a killed router, or before a restarted one had our
        subscription). Returns that many."""
        publisher, first = STAMP.unpack(stamp)
        key = (topic, publisher)
        table = self.pub_next
        nxt = table.get(key)
        if nxt is None and len(table) >= self.max_tracked:
            table.clear()
        if nxt is None or first + count > nxt:
            table[key] = first + count
        if nxt is None or first <= nxt:
            return 0
        missing = first - nxt
        known = self.explained.get(topic, 0)
        if known:
            used = min(known, missing)
            if known > used:
                self.explained[topic] = known - used
            else:  # all shown: kept at zero it would stay for every topic ever gapped
                del self.explained[topic]
            missing -= used
        return missing

    def forget(self, prefix: bytes, heard: tuple[bytes, ...]) -> None:
        """Topics under ``prefix`` and none of ``heard`` were not all heard here: their
        numbering is forgotten, so a subscriber is not charged, as gaps, for what was
        published meanwhile. (startswith(()) is False: nothing heard, all forgotten.)"""
        for table in (self.expected, self.explained):
            for topic in [t for t in table if t.startswith(prefix) and not t.startswith(heard)]:
                del table[topic]
        for key in [k for k in self.pub_next
                    if k[0].startswith(prefix) and not k[0].startswith(heard)]:
            del self.pub_next[key]

    def restart(self) -> None:
        """Another router's numbering (restarted, or moved): none of its topics' numbers
        follow the old ones. Publishers' numbering goes on across it (that is its point)."""
        self.expected.clear()
