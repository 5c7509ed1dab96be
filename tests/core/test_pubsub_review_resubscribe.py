"""Pub/sub numbering across a closed and re-made subscription (mesh/pubsub.py), over a real
router on a thread of this process: what the router rightly did not send while nobody here
was subscribed is no gap, even when older messages still waited in the SUB socket and were
read after the new ``subscribe()``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

from mesh.aio import AsyncMesh
from mesh.sync import Mesh
from router.server import Router
from tests.helpers import router_in_thread, until, wait_for


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def test_a_prefix_closed_and_resubscribed_counts_no_gap_for_what_it_was_not_sent(
        router: Router) -> None:
    """20 messages wait in the SUB socket when ``re.`` is closed; 10 are published while
    unsubscribed; ``re.`` is subscribed again. The waiting 20 were read after the new
    subscribe and set the topic's numbering from old values, so the next message showed
    the 10 as router gaps (gaps == 10), though the router had not been asked for them."""
    pub = Mesh.connect(router.endpoint, timeout=10)  # its own I/O thread: this loop may block

    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            side = m.core.subs
            kept = await m.subscribe("re.k.")  # heard all along: its numbering stays
            first = await m.subscribe("re.")
            pub.publish("re.k.t", 0)
            for i in range(20):
                pub.publish("re.t", i)
            pub.flush(wait=True)  # (blocks this loop: nothing here reads the SUB socket)
            assert side.sock is not None
            assert side.sock.poll(10_000, zmq.POLLIN)  # the 20 wait there, unread
            first.close()
            wait_for(lambda: router.proxy.subscriptions == 1, message="the router unsubscribed")
            for i in range(10):  # not sent to this client: nobody here is subscribed
                pub.publish("re.t", 100 + i)
            pub.flush(wait=True)

            got: list[object] = []
            again = await m.subscribe("re.", lambda msg: got.append(msg.data))
            assert side.numbering.expected.get(b"re.k.t") == 2  # the narrower subscription's, kept
            pub.publish("re.t", "after")
            pub.flush(wait=True)
            await until(lambda: "after" in got, what="the message after the subscribe")
            await until(lambda: kept.received == 1, what="re.k.t")
            assert (side.gaps, side.lost) == (0, 0)
            assert (again.gaps, again.lost) == (0, 0)
            # numbered afresh from the first message after the SUBACK, not left unchecked
            assert side.numbering.expected[b"re.t"] == 32
            assert side.numbering.pub_next[(b"re.t", pub.core.subs.publisher_id)] == 32
            # a second subscription to a prefix already heard here changes nothing
            also = await m.subscribe("re.")
            assert side.numbering.expected[b"re.t"] == 32
            also.close()
            assert side.numbering.expected[b"re.t"] == 32  # (``again`` still hears it)
        finally:
            await m.close()

    try:
        asyncio.run(main())
    finally:
        pub.close()

