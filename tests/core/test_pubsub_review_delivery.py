"""Pub/sub bugs found by review, each over a real router on a thread of this process: a
callback that closes its subscription gets nothing more, even from the rest of its batch;
several tasks iterating one subscription all wake (on a message or on close); and a
long-lived subscriber to many topics keeps a bounded per-topic numbering, as the router does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mesh import pubsub
from mesh.aio import AsyncMesh
from mesh.pub_numbering import STAMP
from mesh.pubsub import Message
from mesh.subscription import Subscription
from router.server import Router
from tests.helpers import router_in_thread, until


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def test_a_callback_that_closes_its_subscription_gets_no_more_of_its_batch(
        router: Router) -> None:
    """A burst of publishes travels as one batch; a callback closing its subscription on
    the third message used to be called for the other 47 all the same."""

    async def main() -> None:
        pub = await AsyncMesh.connect(router.endpoint, timeout=10)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            got: list[int] = []
            box: dict[str, Subscription] = {}

            def take_three(msg: Message) -> None:
                got.append(msg.data)
                if len(got) == 3:
                    box["sub"].close()

            box["sub"] = sub = await m.subscribe("burst.", take_three)
            marker = await m.subscribe("marker.")
            for i in range(50):  # one loop turn: one batch
                pub.publish("burst.t", i)
            pub.publish("marker.t", "after")  # same connection: arrives after the burst
            await pub.flush(wait=True)
            assert (await marker.aget(timeout=10)).data == "after"
            assert got == [0, 1, 2]
            assert sub.received == 3  # what it was handed, not the whole batch
        finally:
            await pub.close()
            await m.close()

    asyncio.run(main())


def test_every_task_iterating_one_subscription_ends_when_it_closes(router: Router) -> None:
    """Two tasks ``async for`` over one subscription (a worker pool): only the last to wait
    was ever woken, so the other waited for ever, through close and client close."""

    async def main() -> None:
        pub = await AsyncMesh.connect(router.endpoint, timeout=10)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            sub = await m.subscribe("pool.")
            started: list[int] = []
            got: list[tuple[int, int]] = []

            async def worker(n: int) -> None:
                started.append(n)
                async for msg in sub:
                    got.append((n, msg.data))

            tasks = [asyncio.ensure_future(worker(n)) for n in (1, 2)]
            await until(lambda: len(started) == 2, what="both workers wait")
            pub.publish("pool.t", 7)
            await pub.flush(wait=True)
            await until(lambda: len(got) == 1, what="one worker takes the message")
            sub.close()
            done, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            assert not pending, "a worker still waits on a closed subscription"
            assert [d for _, d in got] == [7]  # delivered once, to one of them
        finally:
            await pub.close()
            await m.close()

    asyncio.run(main())


def test_a_subscriber_to_many_topics_keeps_bounded_numbering(
        router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    """Topics named per job: the subscriber kept each one's router sequence for as long as
    it stayed subscribed (the router caps its own table); now the same cap applies, and a
    table that restarts counts no false gap or loss."""
    monkeypatch.setattr(pubsub, "MAX_TRACKED", 64)

    async def main() -> None:
        pub = await AsyncMesh.connect(router.endpoint, timeout=10)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            sub = await m.subscribe("job.")
            for i in range(300):
                pub.publish(f"job.{i}.done", i)
            for i in range(300):  # each topic again: numbering forgotten meanwhile
                pub.publish(f"job.{i}.done", i)
            await pub.flush(wait=True)
            await until(lambda: sub.received == 600, what="all 600 received")
            side = m.core.subs
            numbering = side.numbering
            assert len(numbering.expected) <= 64
            assert len(numbering.pub_next) <= 64
            assert (sub.gaps, sub.lost, sub.dropped) == (0, 0, 0)
            # router-counted gaps a publisher's numbering has since shown are forgotten,
            # and the table of those still to show is bounded too
            assert numbering.publisher(b"other.t", STAMP.pack(b"p" * 8, 1), 1) == 0
            numbering.explain(b"other.t", 2)
            assert numbering.publisher(b"other.t", STAMP.pack(b"p" * 8, 4), 1) == 0
            assert b"other.t" not in numbering.explained
            for i in range(300):
                numbering.explain(f"other.{i}".encode(), 1)
            assert len(numbering.explained) <= 64
        finally:
            await pub.close()
            await m.close()

    asyncio.run(main())
