"""The client's fire-and-forget sends and streams carry the caller's trace context; every
pattern is counted in ``agp_client_messages_total`` (publishes, stream chunks, sealed sends)
and a flush's internal ping is not; breakers per destination are bounded; a sync publish of
an unencodable value raises to its caller.

A real router runs in a thread of this process, the agent on the test's asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.base import Agent, action
from mesh import Mesh, aio, metrics, telemetry
from mesh.aio import AsyncMesh
from mesh.errors import NoSuchService
from router.server import Router
from tests.helpers import router_in_thread, until
from tests.security.sealed_mesh import sealed_mesh, tapped_router  # noqa: F401 (fixtures)
from tests.workflow._helpers import run_async

NS = "test/observed"
DEST = NS + "/echo"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.setup_tracing("test-client-observed", exporter=exporter)
    yield exporter
    telemetry.shutdown_tracing()


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> metrics.ClientStats:
    s = metrics.ClientStats()
    monkeypatch.setattr(metrics, "CLIENT", s)  # as enable_client_metrics() would
    return s


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[Router]:
    monkeypatch.setenv("AGP_DIRECT_STREAMS", "0")
    with router_in_thread() as r:
        yield r


class Echo(Agent):
    name = "echo"
    namespace = NS
    register_with_registry = False

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.fired = 0

    @action()
    async def fire(self, data: Any, ctx: Any) -> None:
        self.fired += 1

    @action(stream=True)
    async def up(self, st: Any, ctx: Any) -> int:
        n = 0
        async for _ in st:
            n += 1
        return n


async def _stop(agent: Agent, m: AsyncMesh) -> None:
    await m.close()
    agent.stop()
    await agent._shutdown(1)


def _handled(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_sends_and_streams_carry_the_callers_trace_context(
        spans: InMemorySpanExporter, router: Router) -> None:
    async def main() -> tuple[int, int, int]:
        agent = Echo(endpoint=router.endpoint)
        await agent.start()
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            with telemetry.client_span("outer", "send") as s1:
                await m.send(DEST, "fire", 1)
            with telemetry.client_span("outer", "nowait") as s2:
                m.send_nowait(DEST, "fire", 2)
            await until(lambda: len(_handled(spans, f"handle {DEST}/fire")) == 2,
                        what="both sends handled")
            with telemetry.client_span("outer", "stream") as s3:
                async with m.stream(DEST, "up", None) as st:
                    await st.write(b"x")
                    await st.write(b"y")
            assert st.result == 2
            await until(lambda: _handled(spans, f"handle {DEST}/up"), what="stream handled")
            await until(lambda: len(_handled(spans, f"route {DEST}")) == 3,
                        what="the router's hops recorded (two sends, the stream's open)")
        finally:
            await _stop(agent, m)
        return (s1.get_span_context().span_id, s2.get_span_context().span_id,
                s3.get_span_context().span_id)

    send_id, nowait_id, stream_id = run_async(main())
    fired = _handled(spans, f"handle {DEST}/fire")
    assert sorted(s.parent.span_id for s in fired if s.parent is not None) == sorted(
        [send_id, nowait_id])
    (up,) = _handled(spans, f"handle {DEST}/up")
    assert up.parent is not None
    assert up.parent.span_id == stream_id
    hops = _handled(spans, f"route {DEST}")  # both sends and the stream's open: traced
    assert sorted(h.parent.span_id for h in hops if h.parent is not None) == sorted(
        [send_id, nowait_id, stream_id])


def test_publishes_and_stream_chunks_are_counted_and_a_flush_ping_is_not(
        stats: metrics.ClientStats, router: Router) -> None:
    async def main() -> None:
        agent = Echo(endpoint=router.endpoint)
        await agent.start()
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            for i in range(3):
                m.publish("observed.a", i)
            m.publish("observed.b", b"raw!", raw=True)
            await m.flush(wait=True)
            async with m.stream(DEST, "up", None) as st:
                for _ in range(4):
                    await st.write(b"12345", raw=True)
            assert st.result == 4
        finally:
            await _stop(agent, m)

    run_async(main())
    assert stats.messages["publish"] == 4
    assert stats.bytes_sent["publish"] >= 4  # three msgpack ints and four raw bytes
    assert stats.messages["stream"] == 4
    assert stats.bytes_sent["stream"] == 20
    assert stats.messages["request"] == 0  # the flush's barrier is no request of the user's


def test_sync_publishes_are_counted_and_unencodable_raises_to_the_caller(
        stats: metrics.ClientStats, router: Router) -> None:
    with Mesh.connect(router.endpoint) as m:
        sub = m.subscribe("observed.")
        m.publish("observed.x", 1)
        with pytest.raises(TypeError, match="cannot encode"):
            m.publish("observed.x", object())
        m.publish("observed.x", 3)
        m.flush(wait=True)
        got = [sub.get(timeout=10).data for _ in range(2)]
    assert got == [1, 3]
    assert stats.messages["publish"] == 2
    assert stats.messages["request"] == 0


def test_sealed_send_is_counted(stats: metrics.ClientStats, sealed_mesh: Any) -> None:  # noqa: F811
    m, _captured, _tamper = sealed_mesh
    before = stats.messages["send"]
    m.send("test/e2e/echo", "echo", {"k": 1})
    assert stats.messages["send"] == before + 1
    assert stats.bytes_sent["send"] > 0


def test_breakers_are_bounded_and_open_ones_kept(stats: metrics.ClientStats,
                                                 router: Router) -> None:
    bound = aio.MAX_BREAKERS

    async def main() -> tuple[int, bool, int]:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            hot = m.breaker("typo/hot")
            assert hot is not None
            for _ in range(hot.failure_threshold):
                hot.on_failure()
            assert hot.state.value == "open"
            # real calls to names nobody serves: each makes a breaker on the way
            sem = asyncio.Semaphore(64)

            async def call(i: int) -> None:
                async with sem:
                    with pytest.raises(NoSuchService):
                        await m.request(f"typo/{i}", "x", timeout=10)

            await asyncio.gather(*(call(i) for i in range(bound + 200)))
            assert m._breakers is not None
            (fam,) = [f for f in stats.collect() if f.name == "agp_breaker_state"]
            return len(m._breakers), m.breaker("typo/hot") is hot, len(fam.samples)
        finally:
            await m.close()

    n, kept, exported = run_async(main(), timeout=60)
    assert n <= bound
    assert exported <= bound  # agp_breaker_state{destination} series
    assert kept  # open: not evicted while closed ones can go


def test_open_breakers_give_way_only_past_the_slack(router: Router) -> None:
    bound = aio.MAX_BREAKERS

    async def main() -> tuple[int, int]:
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        try:
            for i in range(2 * bound + 10):
                b = m.breaker(f"open/{i}")
                assert b is not None
                for _ in range(b.failure_threshold):
                    b.on_failure()
            assert m._breakers is not None
            return len(m._breakers), sum(1 for k in m._breakers if k == b"open/0")
        finally:
            await m.close()

    n, first_left = run_async(main())
    assert n == 2 * bound  # all open: kept up to the slack, never beyond
    assert first_left == 0  # the least recently used went first
