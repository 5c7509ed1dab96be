"""Three client nits found by review, each over a real router on a thread of this process:
tracking a client per request costs no scan of every client; a token provider renewing
lazily (the same token until near its ``exp``) is not a failing one; a publish refused on
the sync face's I/O thread is counted and does not hold back the publishes behind it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mesh import metrics
from mesh.aio import AsyncMesh
from mesh.core import Security
from mesh.errors import Forbidden
from mesh.sync import Mesh
from router.server import Router
from security.home import Home, client_security
from tests.core.test_session_recovery_tokens import DEADLINE, admin_works, sign, until
from tests.helpers import router_in_thread, wait_for
from tests.security.sealed_mesh import secure_router_thread


@pytest.fixture
def router() -> Iterator[Router]:
    with router_in_thread() as r:
        yield r


# ---------------------------------------------------------------- 1. ClientStats.track
def test_tracking_a_tracked_client_again_skips_the_lock_and_the_scan(router: Router) -> None:
    """``observed_request`` tracks the client on every request: each call used to take the
    lock, scan every tracked client and build a new record."""
    stats = metrics.ClientStats()
    scans = [0]
    live = stats._live

    def counted_live() -> list[Any]:
        scans[0] += 1
        return live()

    stats._live = counted_live  # type: ignore[method-assign]

    async def main() -> None:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        other = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            stats.track(m)
            assert scans[0] == 1  # a new client: folded in after a scan
            record = stats._tracked[id(m)]
            for _ in range(1000):
                stats.track(m)
            assert scans[0] == 1
            assert stats._tracked[id(m)] is record  # the same record, none rebuilt
            stats.track(other)  # another client is still tracked (after a scan)
            assert scans[0] == 2
            assert set(stats._tracked) == {id(m), id(other)}
            live_now, _, _ = stats.drop_tallies()
            assert {id(x) for x in live_now} == {id(m), id(other)}
        finally:
            await other.close()
            await m.close()

    asyncio.run(main())


# ---------------------------------------------------------------- 2. a lazy provider
def test_a_provider_with_nothing_newer_is_no_failure_and_asked_again_before_exp(
        mesh_home: Home, caplog: pytest.LogCaptureFixture) -> None:
    """A provider that hands out its token until near its ``exp`` used to count each
    repeat as a token failure, log a WARNING, and wait longer each time (up to 30 s): past
    the ``exp``, and the router's leeway, the session went. Now a repeat is asked again no
    later than halfway to the ``exp``, and the new token is taken before it."""
    caplog.set_level(logging.WARNING, logger="agp.client")
    lifetime = 10.0
    repeats = 2  # refreshes answered with the same token before a new one
    sec: Security = client_security("tester", home=mesh_home)  # type: ignore[assignment]
    given: list[tuple[float, str, int]] = []  # (when, token, its exp)

    def provider() -> str:
        now = time.time()
        if given and len(given) <= repeats:
            _, token, exp = given[-1]
        else:
            exp = int(now + lifetime)
            token = sign(mesh_home, sec, "tester", exp=exp, now=now)
        given.append((now, token, exp))
        return token

    sec.token_provider = provider
    with secure_router_thread() as r:
        async def main() -> None:
            m = await AsyncMesh.connect(r.endpoint, security=sec, timeout=DEADLINE)
            try:
                first = sec.token
                first_exp = given[0][2]
                await until(lambda: sec.token != first, timeout=lifetime + DEADLINE,
                            what="a new token taken")
                taken_at = time.time()
                assert len(given) == repeats + 2, given
                assert all(tok == first for _, tok, _ in given[:repeats + 1])
                assert taken_at < first_exp, (taken_at, first_exp, given)
                assert m.core.counters.get("token_failures", 0) == 0
                assert await admin_works(m)  # served on the new token
            finally:
                await m.close()

        asyncio.run(main())
    warned = [rec.getMessage() for rec in caplog.records
              if rec.name == "agp.client" and "token" in rec.getMessage()]
    assert not warned, warned


# ---------------------------------------------------------------- 3. a refused publish
def test_a_publish_refused_on_the_io_thread_is_counted_and_the_rest_go_on(
        router: Router, caplog: pytest.LogCaptureFixture) -> None:
    """An ``Error`` from the batcher (FORBIDDEN from an e2e mesh's topic-key check,
    OVERLOADED) escaped the sync face's drain callback: asyncio logged it, the message was
    lost uncounted, and the publishes queued behind it waited for the next publish."""
    caplog.set_level(logging.WARNING)
    got: list[Any] = []
    with Mesh.connect(router.endpoint) as sub, Mesh.connect(router.endpoint) as pub:
        sub.subscribe("nits.", got.append)
        side = pub.core.subs
        real_publish = side.publish

        def publish(topic: bytes, frame: bytes, raw: bool) -> None:
            if topic == b"nits.denied":  # as TopicKeyClient.check_publish would refuse it
                raise Forbidden("publish to nits.denied refused")
            real_publish(topic, frame, raw)

        side.publish = publish  # type: ignore[method-assign]
        # hold the I/O loop so that all four are drained in one go, the refused one second
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(10)

        pub._io.loop.call_soon_threadsafe(hold)
        assert held.wait(10)
        try:
            for topic, data in (("nits.ok", 1), ("nits.denied", 2), ("nits.ok", 3),
                                ("nits.ok", 4)):
                pub.publish(topic, data)
        finally:
            release.set()
        # no flush, no later publish: the ones behind the refused one go out on their own
        wait_for(lambda: len(got) >= 3, timeout=10, message="the publishes after it")
        assert [msg.data for msg in got] == [1, 3, 4]
        assert not pub._pubq
        counters = pub.core.counters
        assert counters.get("publish_dropped") == 1
        assert counters.get("publish_dropped_forbidden") == 1
    asyncio_errors = [rec for rec in caplog.records if rec.name == "asyncio"]
    assert not asyncio_errors, [rec.getMessage() for rec in asyncio_errors]
    warned = [rec.getMessage() for rec in caplog.records
              if rec.name == "agp.client" and "dropped" in rec.getMessage()]
    assert len(warned) == 1, warned
