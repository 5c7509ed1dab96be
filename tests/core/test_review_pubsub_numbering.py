"""Review of the SUBACK bookkeeping (mesh/pubsub.py) and publishers' numbering
(mesh/publishing.py, mesh/pub_numbering.py), over a real router on a thread of this
process: a ``subscribe()`` given up leaves nothing subscribed, a SUBACK that never comes
does not keep its prefix subscribed for ever, a publisher that forgets its topics'
numbering is seen as a new publisher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import zmq

from mesh import publishing
from mesh.aio import AsyncMesh
from mesh.errors import DeadlineExceeded
from mesh.pub_numbering import STAMP, PubNumbering
from mesh.sync import Mesh
from router.server import Router
from tests.helpers import router_in_thread, until, wait_for


class Gate:
    """Holds the router's subscription messages (its XPUB side) until released, one per
    permit; the rest of the router (PUBLISH included) runs on."""

    def __init__(self, router: Router) -> None:
        self.closed = False
        self.permits = threading.Semaphore(0)
        self.taken = 0
        self._drain = router.proxy.drain
        router.proxy.drain = self.drain  # type: ignore[method-assign]

    def drain(self, secure: bool, max_messages: int = 1000) -> None:
        if not self.closed:
            self._drain(secure, max_messages)
        elif self.permits.acquire(timeout=0.005):  # (not spinning the router's thread)
            self._drain(secure, 1)
            self.taken += 1

    def let_through(self, n: int) -> None:
        want = self.taken + n
        self.permits.release(n)
        wait_for(lambda: self.taken >= want, message=f"the router took {want} messages")


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def test_a_cancelled_subscribe_leaves_no_subscription_behind(router: Router) -> None:
    """``subscribe()`` under ``asyncio.timeout`` (or a cancelled task) used to leave its
    Subscription in the core, one the caller never got and so can never close: its prefix
    stayed subscribed at the router for ever, filling a queue nobody reads."""

    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        gate = Gate(router)
        try:
            side = m.core.subs
            gate.closed = True  # its SUBACK cannot come before the cancel
            task = asyncio.ensure_future(m.subscribe("gone.", timeout=10))
            await until(lambda: b"gone." in side.subs, what="the subscribe sent")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert b"gone." not in side.subs
            assert b"gone." not in side._acks
            gate.let_through(1)  # the SUBSCRIBE: the UNSUBSCRIBE waits for its SUBACK
            gate.closed = False
            await until(lambda: router.proxy.subscriptions == 0,
                        what="gone. unsubscribed at the router")
            assert (side._owed, side._held) == ({}, {})
        finally:
            gate.closed = False
            await m.close()

    asyncio.run(main())


def test_a_suback_the_router_dropped_does_not_keep_its_prefix_subscribed() -> None:
    """The router's XPUB drops, silently, what a subscriber's full queue cannot take: a
    SUBACK too. The ``subscribe()`` times out and its UNSUBSCRIBE was held for a SUBACK
    that will never come, so the prefix stayed subscribed at the router for ever (and every
    later close of it was held too), its messages sent to a client with nobody for them."""
    with router_in_thread(pub_hwm=1) as router:
        pub = Mesh.connect(router.endpoint, timeout=10)  # its own I/O thread: this loop blocks
        try:
            asyncio.run(_dropped_suback(router, pub))
        finally:
            pub.close()


async def _dropped_suback(router: Router, pub: Mesh) -> None:
    m = await AsyncMesh.connect(router.endpoint, timeout=10, hwm=1)
    gate = Gate(router)
    try:
        side = m.core.subs
        side.suback_grace = 0.5  # (30 s by default)
        flood = await m.subscribe("flood.")
        gate.closed = True
        task = asyncio.ensure_future(m.subscribe("late.", timeout=1))
        await until(lambda: b"late." in side.subs, what="the subscribe sent")
        # this loop blocks from here: nothing reads the SUB socket, its queues fill
        big = b"x" * (1 << 20)
        for _ in range(80):
            pub.publish("flood.t", big, raw=True)
        pub.flush(wait=True)
        gate.let_through(1)  # the SUBSCRIBE: its SUBACK meets the full queue
        gate.closed = False
        with pytest.raises(DeadlineExceeded):
            await task
        await until(lambda: flood.gaps > 0, what="the flood's drops counted")
        assert b"late." not in side.subs
        await until(lambda: router.proxy.subscriptions == 1, timeout=5,
                    what="late. unsubscribed at the router")
        assert (side._owed, side._held) == ({}, {})
        assert m.core.counters.get("pubsub_suback_missing") == 1
        # the prefix works again: a new subscribe is confirmed and delivered to
        got: list[object] = []
        again = await m.subscribe("late.", lambda msg: got.append(msg.data), timeout=10)
        pub.publish("late.t", "after")
        pub.flush(wait=True)
        await until(lambda: got == ["after"], what="the message after the subscribe")
        again.close()
        await until(lambda: router.proxy.subscriptions == 1,
                    what="late. unsubscribed again")
    finally:
        gate.closed = False
        await m.close()


def test_a_publisher_that_forgets_its_topics_numbering_is_a_new_publisher(
        router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``MAX_TRACKED`` topics a publisher forgets its numbering, and a topic it
    publishes to again starts at 1. Under the same publisher id, a subscriber took those
    numbers as already seen, so a batch lost after it was not counted (lost stayed 0)."""
    monkeypatch.setattr(publishing, "MAX_TRACKED", 3)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.SUB)  # what the router sends, frame by frame
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(router.pub_endpoint)
    raw.setsockopt(zmq.SUBSCRIBE, b"n.")

    def frames(n: int) -> list[list[bytes]]:
        got: list[list[bytes]] = []
        while len(got) < n:
            assert raw.poll(10_000), f"{n} messages from the router (got {len(got)})"
            msg = raw.recv_multipart()
            if len(msg) >= 3:  # a PUBLISH (a SUBACK or beacon has two frames)
                got.append(msg)
        return got

    async def main() -> None:
        pub = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            for topic in ("n.t", "n.t", "n.a", "n.b", "n.c", "n.t", "n.t", "n.t"):
                pub.publish(topic, 1)
                await pub.flush(wait=True)  # one batch each
        finally:
            await pub.close()

    try:
        wait_for(lambda: raw.poll(0) and raw.recv_multipart(), message="the SUBACK")
        asyncio.run(main())
        sent = frames(8)
        numbering = PubNumbering()
        routed: dict[bytes, int] = {}  # the router's numbering, as if it never had the lost one
        lost = 0
        for i, msg in enumerate(sent):
            if i == 6:  # the second batch to n.t after its numbering was forgotten: it died
                continue  # on the way, where the router could not count it (killed, say)
            routed[msg[0]] = routed.get(msg[0], 0) + 1
            lost += numbering.published(msg[0], routed[msg[0]], 1, msg[2])[1]
        assert lost == 1
        assert len({STAMP.unpack(msg[2])[0] for msg in sent}) == 2  # a new publisher id
    finally:
        raw.close()
