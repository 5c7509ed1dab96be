"""Faults between real processes: kills, restarts, deadlines, overload, oversize, garbage."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.procs import router_process
from mesh import (
    AsyncMesh,
    DeadlineExceeded,
    Mesh,
    NoSuchService,
    Overloaded,
    TooLarge,
    Unavailable,
)
from tests.helpers import rss_bytes, wait_for

SVC = "test/ns/echo"


def _instances(m: Mesh, service: str = SVC) -> list[str]:
    for svc in m.request("agp/router", "services"):
        if svc["service"] == service:
            return [i["name"] for i in svc["instances"]]
    return []


def test_dead_worker_is_noticed_within_5s_and_in_flight_gets_an_error(router, start_echo
                                                                       ) -> None:
    victim = start_echo(instance="victim")
    with Mesh.connect(router.ready_info["router"]) as m:
        result: dict = {}

        def call() -> None:
            t0 = time.monotonic()
            try:
                m.request(SVC, "sleep", 60, timeout=30)
            except Exception as exc:
                result["exc"] = exc
            result["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=call)
        t.start()
        wait_for(lambda: any(i["inflight"] for s in m.request("agp/router", "services")
                             for i in s["instances"]), message="request in flight")
        killed_at = time.monotonic()
        victim.kill()
        t.join(15)
        assert isinstance(result["exc"], Unavailable)
        assert time.monotonic() - killed_at < 5.0
        wait_for(lambda: not _instances(m), timeout=5, message="instance gone from the table")


def test_idempotent_request_is_redispatched_when_its_worker_dies(router, start_echo) -> None:
    a = start_echo(instance="a", capacity=1)
    b = start_echo(instance="b", capacity=1)
    with Mesh.connect(router.ready_info["router"]) as m:
        out: dict = {}

        def call() -> None:
            out["r"] = m.request(SVC, "sleep", 1.0, timeout=30, idempotent=True)

        # occupy whichever instance the balancer picks next, then kill exactly that one
        t = threading.Thread(target=call)
        t.start()
        busy = wait_for(lambda: [i["name"] for s in m.request("agp/router", "services")
                                 for i in s["instances"] if i["inflight"]], message="in flight")
        victim = a if busy[0] == a.ready_info["instance"] else b
        survivor = b if victim is a else a
        victim.kill()
        t.join(20)
        assert out["r"]["instance"] == survivor.ready_info["instance"]


def test_deadline_expiry_and_expired_work_not_started(router, start_echo) -> None:
    agent = start_echo(capacity=1)
    inst = agent.ready_info["instance"]
    with Mesh.connect(router.ready_info["router"]) as m:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            m.request(SVC, "sleep", 5, timeout=0.5)
        assert time.monotonic() - t0 < 3
        # occupy the only slot; a request whose deadline passes while it waits in the
        # router's queue is answered by the router and never reaches the agent
        busy = threading.Thread(target=lambda: m.request(SVC, "sleep", 2, timeout=10))
        busy.start()
        wait_for(lambda: any(i["inflight"] for s in m.request("agp/router", "services")
                             for i in s["instances"]), message="slot busy")
        with pytest.raises(DeadlineExceeded):
            m.request(SVC, "record", "too late", timeout=0.3)
        busy.join(15)
        assert "too late" not in m.request(inst, "recorded_items")
        assert m.request("agp/router", "stats")["drops"]["deadline_in_queue"] == 1


def test_overloaded_when_the_queue_is_full(spawn, log_dir) -> None:
    from agents.procs import agent_process

    r = spawn(router_process(extra=["--insecure", "--max-queue", "5"]))
    spawn(agent_process("agents.echo", r.ready_info["router"], name="slow",
                        extra=["--namespace", "test/ns", "--capacity", "1", "--insecure"]))

    async def main() -> list:
        async with await AsyncMesh.connect(r.ready_info["router"]) as m:
            calls = [m.request(SVC, "sleep", 0.5, timeout=20) for _ in range(20)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    overloaded = [x for x in results if isinstance(x, Overloaded)]
    ok = [x for x in results if isinstance(x, dict)]
    assert len(overloaded) >= 10, results
    assert len(ok) >= 5, results
    assert len(overloaded) + len(ok) == 20


def test_unknown_service_answers_at_once(router) -> None:
    with Mesh.connect(router.ready_info["router"]) as m:
        t0 = time.monotonic()
        with pytest.raises(NoSuchService):
            m.request("nobody/home/svc", "x", timeout=30)
        assert time.monotonic() - t0 < 1.0


def test_too_large_is_refused_and_memory_stays_flat(spawn, start_echo) -> None:
    r = spawn(router_process(name="small", extra=["--auth-port", "0", "--max-message-bytes",
                                                  str(1024 * 1024)]))
    with Mesh.connect(r.ready_info["router"]) as m:
        big = bytes(1536 * 1024)
        with pytest.raises(TooLarge):
            m.request(SVC, "echo", big, raw=True)
        before = rss_bytes(r.pid)
        for _ in range(50):
            with pytest.raises(TooLarge):
                m.request(SVC, "echo", big, raw=True)
        assert rss_bytes(r.pid) - before < 16 * 1024 * 1024
        assert m.request("agp/router", "stats")["drops"]["too_large"] == 51


def test_client_and_agent_survive_a_router_restart(spawn, start_echo, router) -> None:
    start_echo()
    endpoint, pub = router.ready_info["router"], router.ready_info["pub"]
    with Mesh.connect(endpoint) as m:
        assert m.request(SVC, "echo", 1) == 1
        first_id = m.request("agp/router", "stats")["router_id"]
        before = m.subscribe("before.")  # a subscription made before the restart
        router.kill()
        spawn(router_process(name="router2", bind=endpoint, pub_bind=pub,
                             extra=["--auth-port", "0"]))

        def works() -> bool:
            try:
                return m.request(SVC, "echo", 2, timeout=2) == 2
            except (Unavailable, NoSuchService, DeadlineExceeded):
                return False

        wait_for(works, timeout=20, interval=0.2, message="served again after restart")
        assert m.request("agp/router", "stats")["router_id"] != first_id
        sub = m.subscribe("after.")
        m.publish("after.restart", "ok")
        assert sub.get(timeout=10).data == "ok"

        def old_subscription_works() -> bool:  # re-subscribed once the new session exists
            m.publish("before.restart", "still")
            try:
                return before.get(timeout=0.5).data == "still"
            except DeadlineExceeded:
                return False

        wait_for(old_subscription_works, timeout=15, interval=0.1,
                 message="the old subscription gets messages again")


def test_messages_that_die_with_the_router_are_counted(spawn, router) -> None:
    """Publishing on through a router SIGKILL and restart: every message the subscriber did
    not get is counted somewhere — a router gap, its own queue, or ``lost`` (the publisher's
    numbering skipped numbers no router counted)."""
    endpoint, pub = router.ready_info["router"], router.ready_info["pub"]
    with Mesh.connect(endpoint) as publisher, Mesh.connect(endpoint) as subscriber:
        sub = subscriber.subscribe("loss.")
        sent = 0

        def burst(n: int = 2000) -> None:
            nonlocal sent
            for _ in range(n):
                publisher.publish("loss.t", sent)
                sent += 1

        burst()
        publisher.flush(wait=True)
        wait_for(lambda: sub.received == sent, message="the first burst arrived")
        burst(20_000)  # some of it is inside the router when it dies
        router.kill()
        spawn(router_process(name="router2", bind=endpoint, pub_bind=pub,
                             extra=["--auth-port", "0"]))
        restarted_at = sent
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # publish on until the subscriber hears again
            burst(200)
            if sub.queue and sub.queue[-1].data >= restarted_at:
                break
            time.sleep(0.01)  # paces this bounded loop; the condition is the sync point
        burst()
        publisher.flush(wait=True)
        dropped_at_publisher = publisher._amesh.core.counters.get("publish_dropped", 0)

        def accounted() -> bool:  # (received includes what its own queue later dropped)
            return sub.received + sub.gaps + sub.lost + dropped_at_publisher == sent

        wait_for(accounted, timeout=15, message="every message delivered or counted "
                 f"(sent {sent}, received {sub.received}, gaps {sub.gaps}, dropped "
                 f"{sub.dropped}, lost {sub.lost}, publisher dropped {dropped_at_publisher})")
        seen = [m.data for m in list(sub.queue)]
        assert seen == sorted(set(seen))  # in order, no duplicate
        assert sub.lost > 0  # the burst died with the router: counted by the publisher's numbers


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1,
                max_size=10))
def test_router_survives_random_multipart_messages(fuzz_router, batch) -> None:
    endpoint, sock = fuzz_router
    for frames in batch:
        sock.send_multipart(frames)
    with Mesh.connect(endpoint, timeout=10) as m:
        assert m.request("agp/router", "ping") == "pong"  # survived, and still serves
        stats = m.request("agp/router", "stats")
        assert {"peers", "malformed", "drops", "router_id"} <= stats.keys()


@pytest.fixture(scope="module")
def fuzz_router():
    import os
    import tempfile
    from pathlib import Path

    proc = router_process(extra=["--insecure"], log_dir=Path(tempfile.mkdtemp()))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        proc.start()  # inside the try: a failed start is still stopped
        sock.connect(proc.ready_info["router"])
        yield proc.ready_info["router"], sock
        with Mesh.connect(proc.ready_info["router"]) as m:
            stats = m.request("agp/router", "stats")
        # every garbage message was counted: malformed, or refused as an unknown session
        assert stats["malformed"] + stats["drops"].get("unknown_session", 0) > 0
        assert proc.alive(), "the router died"
    finally:
        sock.close(0)
        ctx.term()
        proc.stop()
        del os
