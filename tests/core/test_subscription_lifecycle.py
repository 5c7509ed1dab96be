"""A subscription's life on the sync client: closed from any thread without touching the I/O
thread's socket or loop objects from the wrong thread (mesh/subscription.py), and kept
across a router restart that moves the pub/sub endpoint to a new port (mesh/pubsub.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agents.procs import router_process
from mesh import Mesh
from mesh.errors import Closed, DeadlineExceeded, NoSuchService, Unavailable
from tests.helpers import wait_for


def test_close_from_another_thread_unsubscribes_on_the_io_thread(router) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        sub = m.subscribe("gone.")
        kept = m.subscribe("kept.")
        threads: list[int] = []
        unsubscribe = sub._unsubscribe
        assert unsubscribe is not None

        def spy(s: object) -> None:  # the real unsubscribe, noting the thread it ran on
            threads.append(threading.get_ident())
            unsubscribe(s)  # type: ignore[arg-type]

        sub._unsubscribe = spy
        sub.close()  # from the test's thread, not the client's I/O thread
        assert threads == [m._io.thread.ident]  # the SUB socket is touched on its thread only
        assert b"gone." not in m.core.subs.subs  # done by the time close() returned
        m.publish("gone.x", 1)
        m.publish("kept.x", 2)
        assert kept.get(timeout=10).data == 2  # (published after gone.x, on one connection)
        assert sub.received == 0
        with pytest.raises(Closed):
            sub.get(timeout=0)


def test_close_from_another_thread_ends_an_async_reader_without_breaking_its_loop(
        router) -> None:
    """An ``aget`` waiting on the client's loop: close() from another thread must wake it
    through that loop (a debug loop refuses a future completed from another thread)."""
    with Mesh.connect(router.ready_info["router"]) as m:
        loop = m._io.loop
        debug_on = threading.Event()

        def set_debug() -> None:
            loop.set_debug(True)
            debug_on.set()

        loop.call_soon_threadsafe(set_debug)
        assert debug_on.wait(10)
        sub = m.subscribe("wake.")
        reader = asyncio.run_coroutine_threadsafe(sub.aget(timeout=30), loop)
        wait_for(lambda: sub._async_waiter is not None, message="the reader waits")
        sub.close()  # must neither raise nor leave the reader waiting
        with pytest.raises(Closed):
            reader.result(10)


def test_close_from_a_callback_on_the_io_thread_does_not_wait_on_itself(router) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        got: list[object] = []
        box: dict[str, object] = {}

        def on_message(msg: object) -> None:
            got.append(msg)
            box["sub"].close()  # type: ignore[attr-defined]

        box["sub"] = sub = m.subscribe("self.", on_message)
        m.publish("self.x", 1)
        wait_for(lambda: sub.closed, message="the callback closed its subscription")
        assert b"self." not in m.core.subs.subs
        assert len(got) == 1
        assert m.request("agp/router", "stats")["router_id"]  # the I/O thread still serves


def test_subscriptions_follow_a_router_whose_pub_endpoint_moved(spawn, router) -> None:
    """The restarted router's WELCOME names a new pub/sub port: the client joins it and
    subscribes again; no message is counted as a router gap that was not one."""
    endpoint, old_pub = router.ready_info["router"], router.ready_info["pub"]
    with Mesh.connect(endpoint) as m:
        before = m.subscribe("moved.")
        m.publish("moved.t", 0)
        assert before.get(timeout=10).data == 0
        router.kill()
        router2 = spawn(router_process(name="router2", bind=endpoint,
                                       pub_bind="tcp://127.0.0.1:0", extra=["--auth-port", "0"]))
        assert router2.ready_info["pub"] != old_pub  # the pub/sub endpoint moved

        def served() -> bool:
            try:
                return bool(m.request("agp/router", "stats", timeout=2)["router_id"])
            except (Unavailable, NoSuchService, DeadlineExceeded):
                return False

        wait_for(served, timeout=20, interval=0.2, message="a session with the new router")
        assert m.core.subs.endpoint == router2.ready_info["pub"]
        published = 1

        def hears_again() -> bool:
            nonlocal published
            m.publish("moved.t", published)
            published += 1
            try:
                return before.get(timeout=0.5).data >= 1
            except DeadlineExceeded:
                return False

        wait_for(hears_again, timeout=15, interval=0.1,
                 message="the old subscription gets messages from the new router")
        m.flush(wait=True)
        # what was published before the subscription reached the new router is counted
        # lost (the publisher's numbering skipped); nothing is a router gap

        def accounted() -> bool:
            dropped = m.core.counters.get("publish_dropped", 0)  # (refused at the client)
            return before.received + before.lost + dropped == published

        wait_for(accounted, message=f"every message received or counted (published "
                 f"{published}, received {before.received}, lost {before.lost}, gaps "
                 f"{before.gaps}, counters {m.core.counters})")
        assert before.gaps == 0
        later = m.subscribe("later.")  # new subscriptions go to the new endpoint too
        m.publish("later.t", "x")
        assert later.get(timeout=10).data == "x"


def test_after_a_move_closing_one_of_two_subscriptions_keeps_the_other(spawn, router) -> None:
    """libzmq counts SUBSCRIBEs per prefix: the new socket must hold one per Subscription,
    or the first close unsubscribes the prefix for the other too (nothing counted)."""
    endpoint = router.ready_info["router"]
    with Mesh.connect(endpoint) as m:
        a = m.subscribe("moved.")
        b = m.subscribe("moved.")
        router.kill()
        spawn(router_process(name="router2", bind=endpoint, pub_bind="tcp://127.0.0.1:0",
                             extra=["--auth-port", "0"]))
        published = 0

        def b_hears() -> bool:
            nonlocal published
            m.publish("moved.t", published)
            published += 1
            try:
                return b.get(timeout=0.5).data >= 0
            except (DeadlineExceeded, Unavailable, NoSuchService):
                return False

        wait_for(b_hears, timeout=20, interval=0.1, message="b hears the new router")
        a.close()
        for i in range(20):
            m.publish("moved.t", 1000 + i)
        m.flush(wait=True)
        got: list[int] = []

        def b_got_them() -> bool:
            try:
                got.append(b.get(timeout=0.2).data)
            except DeadlineExceeded:
                pass
            return sum(1 for g in got if g >= 1000) == 20

        wait_for(b_got_them, timeout=15, message=f"b hears all 20 after a.close() (got {got})")
