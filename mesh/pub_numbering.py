"""A subscriber's view of pub/sub numbering, fed plain values (no socket, no subscriptions).

Two numberings meet here. The router numbers each topic's messages (the route frame's
sequence, repeated by its beacons and SUBACKs): a skip is what its high-water mark dropped
for this subscriber, a *gap*. Each publisher numbers its own messages per topic (the
header frame, ``STAMP``): a skip the router's gaps do not account for died where the router
could not count it (a killed or restarted router) and is *lost*. Gaps this side counted are
kept until a publisher's skip shows them, so the same messages are not counted twice.

The router does not say whose messages a gap held, so each gap is kept as a *share* that
only the publishers known on the topic when it happened may show, each once: a publisher's
next batch after it shows its part (its skip) or none (in order), and a share every one of
them has shown since is expired. So a gap of a publisher that stopped (or was new, its first
numbers never seen) cannot absorb another publisher's later real loss. Where one skip could
be either, it is taken as the router's (counted once, as a gap): never twice.

Every table is bounded by ``max_tracked``: past it a table restarts, and a topic it
forgot restarts its numbering unseen, as the router's own table does (a topic per job, or
publishers that restart, must not grow a long-lived subscriber for ever).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["MAX_SHARES", "MAX_TRACKED", "STAMP", "PubNumbering"]

STAMP: Final = struct.Struct("<8sQ")  # a batch's header frame: publisher id, its first number
MAX_TRACKED: Final = 100_000  # numberings kept per table (topics; (topic, publisher) pairs)
# gaps kept per topic still to show; past it the oldest two merge (into the one more
# publishers may show: a loss may then pass as a gap, a gap never as a loss)
MAX_SHARES: Final = 16


class PubNumbering:
    """Per-topic router numbering and per-(topic, publisher) numbering for one subscriber.

    Each method takes what one message said and returns how many messages it shows
    missed (router gaps) or lost; the caller charges them to its subscriptions. Tables are
    cleared in place, never replaced (the caller may hold them)."""

    __slots__ = ("expected", "explained", "marks", "max_tracked", "pub_next", "publishers",
                 "serial")

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self.expected: dict[bytes, int] = {}  # topic -> the router's next sequence number
        self.pub_next: dict[tuple[bytes, bytes], int] = {}  # (topic, publisher) -> number
        self.publishers: dict[bytes, int] = {}  # topic -> publishers numbered in pub_next
        # router-counted gaps publishers may still show: topic -> shares, oldest first, each
        # [serial, messages, publishers yet to show theirs]
        self.explained: dict[bytes, list[list[int]]] = {}
        self.serial = 0  # the last share's (only grows: marks compare with it)
        # (topic, publisher) -> serial when it last published while shares were kept: it
        # may show only the shares after (none kept: all of them)
        self.marks: dict[tuple[bytes, bytes], int] = {}

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
            if topic in self.explained:  # (after a gap only) none of the kept ones its
                self.shown(topic, key, 0)
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
        """Gaps the router's numbering showed: a skip over them, of a publisher known here
        now, is not lost (one not known has no numbering here to skip: nothing is kept)."""
        waiting = self.publishers.get(topic)
        if not waiting:
            return
        # (bounded without a check of its own: a topic is here only with a publisher in
        # pub_next, which max_tracked bounds and whose clear empties this table too)
        shares = self.explained.setdefault(topic, [])
        self.serial += 1
        shares.append([self.serial, missed, waiting])
        if len(shares) > MAX_SHARES:
            oldest = shares.pop(0)
            shares[0][1] += oldest[1]

    def shown(self, topic: bytes, key: tuple[bytes, bytes], missing: int) -> int:
        """A publisher's batch after the topic's kept gaps: its skip of ``missing`` shows
        its part of those it may show, oldest first. Returns what they do not explain."""
        shares = self.explained[topic]
        mark = self.marks.get(key, 0)
        self.marks[key] = self.serial
        kept = []
        for share in shares:
            if share[0] > mark:
                used = min(share[1], missing)
                missing -= used
                share[1] -= used
                share[2] -= 1
            if share[1] > 0 and share[2] > 0:  # else all shown, or by none that may show it
                kept.append(share)
        if kept:
            shares[:] = kept
        else:  # an empty list kept would stay for every topic ever gapped
            del self.explained[topic]
        return missing

    def publisher(self, topic: bytes, stamp: bytes, count: int) -> int:
        """A publisher's numbering skipped: what the router's gaps did not already count was
        lost on the way (with a killed router, or before a restarted one had our
        subscription). Returns that many."""
        publisher, first = STAMP.unpack(stamp)
        key = (topic, publisher)
        table = self.pub_next
        nxt = table.get(key)
        if nxt is None:
            if len(table) >= self.max_tracked:  # all unseen now: none shows a kept gap
                for kept in (table, self.publishers, self.explained, self.marks):
                    kept.clear()
            self.publishers[topic] = self.publishers.get(topic, 0) + 1
            if topic in self.explained:
                self.marks[key] = self.serial  # new: none of the gaps kept are its
            table[key] = first + count
            return 0
        if first + count > nxt:
            table[key] = first + count
        if first < nxt:  # numbers already seen: they show nothing
            return 0
        missing = first - nxt
        if topic in self.explained:
            return self.shown(topic, key, missing)
        return missing

    def forget(self, prefix: bytes, heard: tuple[bytes, ...]) -> None:
        """Topics under ``prefix`` and none of ``heard`` were not all heard here: their
        numbering is forgotten, so a subscriber is not charged, as gaps, for what was
        published meanwhile. (startswith(()) is False: nothing heard, all forgotten.)"""
        for table in (self.expected, self.explained, self.publishers):
            for topic in [t for t in table if t.startswith(prefix) and not t.startswith(heard)]:
                del table[topic]
        for pairs in (self.pub_next, self.marks):
            for key in [k for k in pairs
                        if k[0].startswith(prefix) and not k[0].startswith(heard)]:
                del pairs[key]

    def restart(self) -> None:
        """Another router's numbering (restarted, or moved): none of its topics' numbers
        follow the old ones. Publishers' numbering goes on across it (that is its point)."""
        self.expected.clear()
