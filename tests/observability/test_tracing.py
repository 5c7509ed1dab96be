"""Traces: W3C traceparent propagation, parent links, exporters, and a trace across processes."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agents.procs import ManagedProcess
from mesh import Mesh, telemetry
from tests.helpers import wait_for


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.setup_tracing("test-client", exporter=exporter)
    yield exporter
    telemetry.shutdown_tracing()


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_inject_extract_round_trip(spans: InMemorySpanExporter) -> None:
    with telemetry.client_span("acme/ml/trainer", "train") as span:
        tp = telemetry.inject()
        assert tp == telemetry.inject(span)
    assert tp is not None
    version, trace_id, span_id, flags = tp.split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    assert int(trace_id, 16) == span.get_span_context().trace_id
    assert int(span_id, 16) == span.get_span_context().span_id
    from opentelemetry import trace

    remote = trace.get_current_span(telemetry.extract(tp)).get_span_context()
    assert remote.is_remote
    assert (remote.trace_id, remote.span_id) == (span.get_span_context().trace_id,
                                                 span.get_span_context().span_id)
    assert telemetry.is_sampled(tp)
    assert telemetry.route_flags(tp) == telemetry.TRACED_FLAG


def test_server_span_is_child_of_remote_caller(spans: InMemorySpanExporter) -> None:
    with telemetry.client_span("acme/ml/trainer", "train"):
        tp = telemetry.inject()
    with telemetry.server_span("train", tp, service="acme/ml/trainer", instance="i1"):
        inner = telemetry.inject()  # a call made by the handler continues the same trace
    got = by_name(spans)
    client, server = got["request acme/ml/trainer/train"], got["handle acme/ml/trainer/train"]
    assert client.kind is SpanKind.CLIENT
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id
    assert inner is not None
    assert inner.split("-")[2] == f"{server.context.span_id:016x}"


def test_bad_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    for bad in ("", "garbage", "00-zz-yy-01", "01-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        with telemetry.server_span("x", bad, service="s"):
            pass
        assert not telemetry.is_sampled(bad)
        assert telemetry.route_flags(bad) == 0
    assert all(s.parent is None for s in spans.get_finished_spans())
    assert not telemetry.is_sampled("00-" + "1" * 32 + "-" + "2" * 16 + "-00")


def test_error_marks_the_span(spans: InMemorySpanExporter) -> None:
    from mesh.errors import Overloaded

    with pytest.raises(Overloaded), telemetry.client_span("svc/a/b", "go"):
        raise Overloaded("full")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["agp.error_code"] == "OVERLOADED"


def test_router_hop_span_after_the_fact(spans: InMemorySpanExporter) -> None:
    from proto import agp_pb2

    with telemetry.client_span("acme/ml/trainer", "train") as client:
        envelope = agp_pb2.Envelope(action="train", traceparent=telemetry.inject())
        header = envelope.SerializeToString()
    telemetry.router_hop(header, "acme/ml/trainer", "acme/ml/trainer/i1", 1_000, 5_000)
    telemetry.router_hop(agp_pb2.Envelope(action="x").SerializeToString(), "s", "i", 1, 2)
    telemetry.router_hop(b"\xff\xfe not protobuf", "s", "i", 1, 2)
    hop = by_name(spans)["route acme/ml/trainer"]
    assert len(spans.get_finished_spans()) == 2  # no header context: no span
    assert hop.parent.span_id == client.context.span_id
    assert (hop.start_time, hop.end_time) == (1_000, 5_000)


def test_workflow_run_is_one_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.run_span("r1", "ml_pipeline") as run:
        for step in ("collect", "train"):
            with telemetry.step_span("r1", step, "acme/ml/trainer"), \
                    telemetry.client_span("acme/ml/trainer", step):
                pass
    finished = spans.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {run.context.trace_id}
    steps = [s for s in finished if s.name.startswith("step ")]
    assert len(steps) == 2
    assert all(s.parent.span_id == run.context.span_id for s in steps)


def test_off_is_a_no_op() -> None:
    telemetry.shutdown_tracing()
    assert not telemetry.ENABLED
    with telemetry.client_span("a/b/c", "d") as span:
        assert not span.is_recording()
        assert telemetry.inject() is None
    telemetry.router_hop(b"", "s", "i", 1, 2)  # nothing to do, nothing raised


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_export_when_endpoint_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real OTLP/HTTP exporter posting to a collector stand-in on loopback."""
    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.delenv("AGP_TRACE_FILE", raising=False)
        assert telemetry.setup_tracing("otlp-test")
        with telemetry.client_span("acme/ml/trainer", "otlp_probe"):
            pass
        telemetry.shutdown_tracing()  # flushes the batch processor
        wait_for(lambda: _Collector.received, 10, message="OTLP export")
        path, ctype, body = _Collector.received[0]
        assert path == "/v1/traces"
        assert ctype == "application/x-protobuf"
        assert b"otlp_probe" in body
        assert b"otlp-test" in body
    finally:
        telemetry.shutdown_tracing()
        server.shutdown()
        server.server_close()


def test_trace_crosses_three_processes(spans: InMemorySpanExporter, router: ManagedProcess,
                                       obs_agent: Callable[..., Any]) -> None:
    """test client -> agent A (server span, then a client span) -> agent B (server span):
    one trace, every parent link pointing at the caller's span in the other process."""
    a = obs_agent("relay_a")
    b = obs_agent("relay_b")
    with Mesh.connect(router.ready_info["router"], identity="tester") as m:
        with telemetry.client_span(a.service, "relay") as root:
            reply = m.request(a.service, "relay", {"to": b.service, "payload": "hi"},
                              timeout=10, traceparent=telemetry.inject())
    assert reply["relayed"] == "hi"
    trace_id = f"{root.context.trace_id:032x}"
    a_spans = wait_for(lambda: [s for s in telemetry.read_trace_file(str(a.trace_file))
                                if s["trace_id"] == trace_id and s["name"] != "x"]
                       if len(telemetry.read_trace_file(str(a.trace_file))) >= 2 else None,
                       10, message="agent A spans")
    b_spans = wait_for(lambda: [s for s in telemetry.read_trace_file(str(b.trace_file))
                                if s["trace_id"] == trace_id], 10, message="agent B spans")
    a_server = next(s for s in a_spans if s["kind"] == "SERVER")
    a_client = next(s for s in a_spans if s["kind"] == "CLIENT")
    (b_server,) = b_spans
    assert a_server["parent_span_id"] == f"{root.context.span_id:016x}"
    assert a_server["remote_parent"]
    assert a_server["name"] == f"handle {a.service}/relay"
    assert a_client["parent_span_id"] == a_server["span_id"]
    assert not a_client["remote_parent"]
    assert b_server["parent_span_id"] == a_client["span_id"]
    assert b_server["remote_parent"]
    assert b_server["attributes"]["agp.instance"].endswith(b.instance)
    assert {a_server["pid"], b_server["pid"]} == {a.proc.pid, b.proc.pid}


def test_a_real_workflow_run_is_one_trace(spans: InMemorySpanExporter, tmp_path) -> None:
    """WorkflowRunner with a real SQLite store: the run span parents every step span, and
    what a step calls (here a client span, as an agent request makes) is inside its step."""
    import asyncio

    from mesh.workflow import ArtifactStore, WorkflowRunner, load_spec, open_store

    async def call_step(step, inputs, attempt, avoid):
        with telemetry.client_span(step.agent, step.action):
            return {"step": step.name}

    async def main() -> str:
        runner = WorkflowRunner(open_store(f"sqlite:///{tmp_path / 'runs.db'}"), call_step,
                                artifact_store=ArtifactStore(tmp_path / "art"))
        spec = load_spec({"a": {"agent": "x"}, "b": {"agent": "y", "depends_on": ["a"]},
                          "c": {"agent": "y", "depends_on": ["a"]}})
        record = await runner.run(spec)
        await runner.close()
        return record.id

    run_id = asyncio.run(main())
    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name.startswith("workflow ")]
    assert run.attributes["agp.run_id"] == run_id
    steps = [s for s in finished if s.name.startswith("step ")]
    assert sorted(s.attributes["agp.step"] for s in steps) == ["a", "b", "c"]
    assert {s.context.trace_id for s in finished} == {run.context.trace_id}
    assert all(s.parent.span_id == run.context.span_id for s in steps)
    step_ids = {s.context.span_id for s in steps}
    calls = [s for s in finished if s not in steps and s is not run]
    assert len(calls) == 3
    assert all(c.parent.span_id in step_ids for c in calls)
