"""A SUBACK that answers a timed-out ``subscribe()`` (mesh/pubsub.py), over a real router on
a thread of this process whose XPUB side is made to take one subscription message at a
time: the late SUBACK is no confirmation of the next ``subscribe()`` of the same prefix."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import zmq

from mesh.aio import AsyncMesh
from mesh.errors import DeadlineExceeded
from router.server import Router
from tests.helpers import router_in_thread, until, wait_for


class Gate:
    """Holds the router's subscription messages (its XPUB side) until released, one per
    permit; the rest of the router (PUBLISH included) runs on."""

    def __init__(self, router: Router) -> None:
        self.closed = False
        self.permits = threading.Semaphore(0)
        self.taken = 0  # subscription messages the router handled while closed
        self._drain = router.proxy.drain
        self._sock = router.proxy.sock
        router.proxy.drain = self.drain  # type: ignore[method-assign]

    def drain(self, secure: bool, max_messages: int = 1000) -> None:
        """One message at a time, the gate looked at once each is there: a message sent
        after ``closed`` was set is held (a whole drain let through while the gate was
        open could take it: the test's first subscribe() then did not time out)."""
        for _ in range(max_messages):
            if not self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            if self.closed:
                if self.permits.acquire(timeout=0.005):  # (not spinning the router's thread)
                    self._drain(secure, 1)
                    self.taken += 1
                return
            self._drain(secure, 1)

    def let_through(self, n: int) -> None:
        """``n`` more subscription messages handled, in the order they came."""
        want = self.taken + n
        self.permits.release(n)
        wait_for(lambda: self.taken >= want, message=f"the router took {want} messages")


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


def test_a_late_suback_does_not_confirm_the_next_subscribe_of_its_prefix(
        router: Router) -> None:
    """``subscribe("late.")`` times out before the router took its SUBSCRIBE; it is made
    again at once. The router then takes the first SUBSCRIBE (its SUBACK comes back), the
    UNSUBSCRIBE the timeout sent, the second SUBSCRIBE. The first SUBACK used to confirm
    the second ``subscribe()``, and a message published right after it, reaching the router
    between the UNSUBSCRIBE and the second SUBSCRIBE, was never delivered."""

    async def main() -> None:
        pub = await AsyncMesh.connect(router.endpoint, timeout=10)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        gate = Gate(router)
        try:
            marker = await m.subscribe("mark.")  # same socket, same order: a barrier
            gate.closed = True
            with pytest.raises(DeadlineExceeded):
                await m.subscribe("late.", timeout=0.2)
            got: list[object] = []
            again = asyncio.ensure_future(
                m.subscribe("late.", lambda msg: got.append(msg.data), timeout=10))
            await until(lambda: b"late." in m.core.subs.subs, what="the second subscribe sent")

            gate.let_through(1)  # the first SUBSCRIBE: its SUBACK goes out
            pub.publish("mark.t", 1)
            await pub.flush(wait=True)
            assert (await marker.aget(timeout=10)).data == 1  # the late SUBACK was read
            await until(lambda: again.done(), what="the second subscribe returns")
            gate.let_through(1)  # what the client sent next
            pub.publish("late.t", "after")  # published after subscribe() returned
            pub.publish("mark.t", 2)
            await pub.flush(wait=True)
            assert (await marker.aget(timeout=10)).data == 2  # so "after" came before it
            gate.closed = False
            sub = again.result()
            assert got == ["after"]
            assert (sub.gaps, sub.lost) == (0, 0)

            # the prefix ends: nothing held for it keeps it subscribed
            before = router.proxy.subscriptions
            sub.close()
            await until(lambda: router.proxy.subscriptions == before - 1,
                        what="late. unsubscribed at the router")
        finally:
            gate.closed = False
            await pub.close()
            await m.close()

    asyncio.run(main())
