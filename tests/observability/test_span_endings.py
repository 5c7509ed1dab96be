"""Every span that starts also ends, with the outcome it had: the agent's server span on
each early answer (idempotent replay, e2e refusal, unopenable or undecodable payload), and
workflow step and run spans of failed attempts. Also: single-use headers (a trace context,
an idempotency key) stay out of the agent's envelope cache.

A real router runs in a thread of this process, the agents on an asyncio loop, and a raw
DEALER peer speaks the wire where the client would never send such a message.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agents.base import Agent, action
from mesh import telemetry
from mesh.aio import AsyncMesh
from mesh.errors import ErrorCode, Unauthenticated
from mesh.wire import Cmd, Flag, pack_route, parse_error, parse_route
from proto import agp_pb2
from router.server import Router
from tests.helpers import router_in_thread
from tests.workflow._helpers import run_async


class OpenSpans(SpanProcessor):
    """Counts the server spans started and keeps those not yet ended."""

    def __init__(self) -> None:
        self.started = 0
        self.open: dict[int, str] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name.startswith("handle "):
            with self._lock:
                self.started += 1
                self.open[span.context.span_id] = span.name

    def on_end(self, span: Any) -> None:
        with self._lock:
            self.open.pop(span.context.span_id, None)


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, OpenSpans]]:
    exporter = InMemorySpanExporter()
    assert telemetry.setup_tracing("test-span-endings", exporter=exporter)
    tracker = OpenSpans()
    telemetry._provider.add_span_processor(tracker)
    yield exporter, tracker
    telemetry.shutdown_tracing()


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> Iterator[Router]:
    monkeypatch.setenv("AGP_DIRECT_STREAMS", "0")
    with router_in_thread() as r:
        yield r


class Strict(Agent):
    name = "strict"
    namespace = "test/spans"
    register_with_registry = False
    require_e2e = True

    @action()
    async def go(self, data: Any, ctx: Any) -> Any:
        return data


class Echo(Agent):
    name = "echo"
    namespace = "test/spans"
    register_with_registry = False

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ran = 0

    @action()
    async def go(self, data: Any, ctx: Any) -> Any:
        self.ran += 1
        return data


class RawPeer:
    """A DEALER speaking the wire itself (HELLO, then whatever frames a test sends)."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        hello = agp_pb2.Hello(protocol_version=1, peer_name="raw").SerializeToString()
        self.sock.send_multipart([pack_route(Cmd.HELLO, 0, 0, 0, 1), b"", hello])
        self.expect(Cmd.WELCOME)

    def expect(self, cmd: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(50):
                msg = self.sock.recv_multipart()
                if msg[0][1] == cmd:
                    return msg
        raise AssertionError(f"no {Cmd(cmd).name} within {timeout}s")

    def request(self, ident: int, flags: int, payload: bytes) -> ErrorCode:
        header = agp_pb2.Envelope(action="go").SerializeToString()
        self.sock.send_multipart([pack_route(Cmd.REQUEST, flags, 0, 10_000, ident),
                                  Echo.namespace.encode() + b"/echo", header, payload])
        msg = self.expect(Cmd.ERROR)
        return parse_error(parse_route(msg[0]), msg)[0]


async def _agents(endpoint: str) -> tuple[Strict, Echo]:
    strict, echo = Strict(endpoint=endpoint), Echo(endpoint=endpoint)
    await strict.start()
    await echo.start()
    return strict, echo


async def _stop(*agents: Agent) -> None:
    for a in agents:
        a.stop()
        await a._shutdown(1)


def test_every_server_span_ends(spans: tuple[InMemorySpanExporter, OpenSpans],
                                router: Router) -> None:
    exporter, tracker = spans
    zctx = zmq.Context()
    counts: list[int] = []

    async def main() -> None:
        strict, echo = await _agents(router.endpoint)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        peer = RawPeer(zctx, router.endpoint)
        try:
            for _ in range(2):  # require_e2e refuses a plain payload
                with pytest.raises(Unauthenticated):
                    await m.request(Strict.namespace + "/strict", "go", 1, timeout=10)
            for _ in range(3):  # the 2nd and 3rd are served from the idempotency cache
                assert await m.request(Echo.namespace + "/echo", "go", 7, timeout=10,
                                       idempotency_key="same") == 7
            counts.extend((echo.ran, echo.served))
            # a sealed payload to an agent without keys, and a payload that is not msgpack
            code = await asyncio.to_thread(peer.request, 11, int(Flag.ENCRYPTED), b"x" * 40)
            assert code == ErrorCode.UNAUTHENTICATED
            code = await asyncio.to_thread(peer.request, 12, 0, b"\xc1")
            assert code == ErrorCode.MALFORMED
            assert echo.dropped.get("refused_malformed") == 1
        finally:
            peer.sock.close(linger=0)
            await m.close()
            await _stop(strict, echo)

    try:
        run_async(main())
    finally:
        zctx.term()
    assert tracker.started == 2 + 3 + 2
    assert tracker.open == {}, f"server spans never ended: {sorted(tracker.open.values())}"
    handled = [s for s in exporter.get_finished_spans() if s.name.startswith("handle ")]
    errors = sorted(s.attributes.get("agp.error_code", "") for s in handled
                    if s.status.status_code is StatusCode.ERROR)
    assert errors == ["MALFORMED", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"]
    replays = [s for s in handled if s.attributes.get("agp.idempotent_replay")]
    assert len(replays) == 2
    assert counts == [1, 3]  # one run of the handler, three calls served


def test_single_use_headers_stay_out_of_the_envelope_cache(
        spans: tuple[InMemorySpanExporter, OpenSpans], router: Router) -> None:
    async def main() -> int:
        strict, echo = await _agents(router.endpoint)
        m = await AsyncMesh.connect(router.endpoint, timeout=10)
        dest = Echo.namespace + "/echo"
        try:
            for i in range(3):  # traced: each header carries its own traceparent
                assert await m.request(dest, "go", i, timeout=10) == i
            telemetry.shutdown_tracing()
            for i in range(3):  # untraced, each with its own idempotency key
                assert await m.request(dest, "go", i, timeout=10,
                                       idempotency_key=f"k{i}") == i
            for i in range(3):  # untraced, plain: one header, kept once
                assert await m.request(dest, "go", i, timeout=10) == i
            assert echo.ran == 9
            return len(echo._envelopes)
        finally:
            await m.close()
            await _stop(strict, echo)

    assert run_async(main()) == 1


def test_failed_step_and_run_spans_end_with_error(
        spans: tuple[InMemorySpanExporter, OpenSpans], tmp_path: Any) -> None:
    """A step that raises (once retried), a step that times out: each attempt's span and
    the run's span end with ERROR; a step that succeeds ends OK."""
    from mesh.workflow import ArtifactStore, WorkflowRunner, load_spec, open_store

    exporter, _ = spans
    assert not os.environ.get("AGP_TRACE_FILE")

    async def call_step(step: Any, inputs: Any, attempt: int, avoid: Any) -> Any:
        if step.name == "boom":
            raise RuntimeError(f"attempt {attempt} broke")
        if step.name == "slow":
            await asyncio.Event().wait()  # until the step's own timeout cancels it
        return {"step": step.name}

    async def run(spec: dict[str, Any]) -> Any:
        runner = WorkflowRunner(open_store(f"sqlite:///{tmp_path / 'runs.db'}"), call_step,
                                artifact_store=ArtifactStore(tmp_path / "art"))
        try:
            return await runner.run(load_spec(spec))
        finally:
            await runner.close()

    failed = run_async(run({"ok": {"agent": "x"},
                            "boom": {"agent": "x", "retries": 1, "depends_on": ["ok"]}}))
    timed = run_async(run({"slow": {"agent": "x", "timeout": 0.2}}))
    assert failed.state.value == "failed"
    assert timed.state.value == "failed"

    finished = exporter.get_finished_spans()
    status = {}
    for s in finished:
        key = (s.name, s.attributes.get("agp.attempt"), s.attributes.get("agp.run_id"))
        status[key] = (s.status.status_code, s.status.description or "")
    assert status[("step ok", 1, failed.id)][0] is StatusCode.UNSET  # succeeded: no error
    for attempt in (1, 2):
        code, text = status[("step boom", attempt, failed.id)]
        assert code is StatusCode.ERROR, (attempt, code)
        assert f"attempt {attempt} broke" in text
    code, text = status[("step slow", 1, timed.id)]
    assert code is StatusCode.ERROR
    assert "DeadlineExceeded" in text
    runs = [s for s in finished if s.name.startswith("workflow ")]
    assert len(runs) == 2
    assert all(s.status.status_code is StatusCode.ERROR for s in runs)
