"""OpenTelemetry for agp-mesh: set up once per process, then cheap hooks on the hot paths.

Why a module of our own instead of the SDK directly: the client, the agent and the router
each need the same three things (start a span, put its W3C ``traceparent`` on the wire,
continue a remote one) and must pay nothing when tracing is off. ``ENABLED`` is a plain
module flag that a hook reads before doing anything; it is only true after
:func:`setup_tracing` installed a real exporter.

Exporters (decided by the environment, so a process needs no flag):

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP over HTTP/protobuf, batched (Jaeger takes OTLP).
  Needs ``opentelemetry-exporter-otlp-proto-http``.
* ``AGP_TRACE_FILE`` set: every finished span is appended as one JSON line to that file,
  synchronously, so a test in another process can read the spans of real processes.
* neither: nothing is installed and every helper is a no-op.

Wire: the trace context travels in ``Envelope.traceparent`` (W3C Trace Context,
``00-<trace-id>-<span-id>-<flags>``). Because the router never decodes the header, a
client that sends a *sampled* traceparent also sets :data:`TRACED_FLAG` in the route
frame's flags, and only then does the router look at the header (see :func:`router_hop`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("agp.telemetry")

ENABLED = False  # read by the hooks: True only once an exporter is installed
TRACED_FLAG = 32  # proposed route-frame Flag bit: "the header carries a sampled traceparent"
TRACER_NAME = "agp-mesh"

_propagator = TraceContextTextMapPropagator()
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-|$)")
_provider: Any = None
_lock = threading.Lock()


# ---------------------------------------------------------------------- setup
class JsonLinesExporter:
    """A SpanExporter appending each finished span as one JSON line (tests across processes).

    Appends with one ``write`` per span on a file opened in append mode, so several processes
    may share one file: each line lands whole (O_APPEND, short writes on a local file).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(span_to_dict(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def span_to_dict(span: Any) -> dict[str, Any]:
    """A finished SDK span as plain JSON: ids in hex, as W3C writes them."""
    ctx = span.context
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name", ""),
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "remote_parent": bool(parent is not None and parent.is_remote),
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v)
                       for k, v in (span.attributes or {}).items()},
        "pid": os.getpid(),
    }


def setup_tracing(service_name: str, *, exporter: Any = None) -> bool:
    """Install a tracer provider for this process; True when spans will be exported.

    ``exporter`` (a SpanExporter) overrides the environment: tests pass the SDK's
    ``InMemorySpanExporter``. Calling it again replaces the exporter (last call wins), so a
    process that embeds several roles sets up once with the name of its main role.
    """
    global ENABLED, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors: list[Any] = []
    if exporter is not None:
        processors.append(SimpleSpanProcessor(exporter))
    else:
        trace_file = os.environ.get("AGP_TRACE_FILE")
        if trace_file:
            processors.append(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but "
                            "opentelemetry-exporter-otlp-proto-http is not installed")
            else:
                processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    with _lock:
        if not processors:
            ENABLED = False
            return False
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        for p in processors:
            provider.add_span_processor(p)
        if _provider is not None:
            _provider.shutdown()
        _provider = provider
        ENABLED = True
    return True


def ensure_tracing(service_name: str) -> bool:
    """Set up from the environment once per process (what ``AsyncMesh.connect`` calls, so a
    plain script traces when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``AGP_TRACE_FILE`` is set).
    Cheap when already set up or when neither variable is set."""
    if _provider is not None:
        return True
    if not (os.environ.get("AGP_TRACE_FILE") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    return setup_tracing(service_name)


def shutdown_tracing() -> None:
    """Flush and stop the exporters (the SDK also does this at interpreter exit)."""
    global ENABLED, _provider
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _provider = None
        ENABLED = False


def tracer() -> trace.Tracer:
    """Our provider's tracer (the global no-op one when tracing is off).

    We keep the provider to ourselves rather than ``trace.set_tracer_provider``: the global
    can be set only once per process, and tests set up several times.
    """
    if _provider is None:
        return trace.get_tracer(TRACER_NAME)
    return _provider.get_tracer(TRACER_NAME)


# ---------------------------------------------------------------------- propagation
def inject(span: Span | None = None) -> str | None:
    """The W3C traceparent of ``span`` (default: the current span), or None if there is none."""
    ctx = trace.set_span_in_context(span) if span is not None else None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def extract(traceparent: str | None) -> otel_context.Context:
    """A context whose current span is the remote parent named by ``traceparent``.

    An empty or malformed value gives an empty context (the span starts a new trace), never
    an error: the header comes from a peer.
    """
    if not traceparent:
        return otel_context.Context()
    return _propagator.extract({"traceparent": traceparent}, context=otel_context.Context())


def is_sampled(traceparent: str | None) -> bool:
    """Whether a traceparent is valid W3C and carries the sampled flag (what sets
    :data:`TRACED_FLAG`): all-zero ids and version ff are invalid."""
    if not traceparent:
        return False
    m = _TRACEPARENT_RE.match(traceparent)
    if m is None or m.group(1) == "ff" or m.group(2) == "0" * 32 or m.group(3) == "0" * 16:
        return False
    return bool(int(m.group(4), 16) & 1)


def route_flags(traceparent: str | None) -> int:
    """The route-frame flag bits a client adds for this traceparent (0 or TRACED_FLAG)."""
    return TRACED_FLAG if is_sampled(traceparent) else 0


# ---------------------------------------------------------------------- spans
def _finish(span: Span, exc: BaseException | None) -> None:
    if exc is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        code = getattr(exc, "code", None)
        if code is not None:
            span.set_attribute("agp.error_code", getattr(code, "name", str(code)))
    span.end()


def start_client_span(dest: str, action: str, pattern: str = "request") -> Span:
    """Start the caller's span of a call (child of the current span); end with
    :func:`end_span`. Its traceparent is ``inject(span)``."""
    return tracer().start_span(f"{pattern} {dest}/{action}", kind=SpanKind.CLIENT,
                               attributes={"agp.destination": dest, "agp.action": action,
                                           "agp.pattern": pattern})


def end_span(span: Span | None, exc: BaseException | None = None) -> None:
    """End a span started by one of the ``start_*`` functions, with an error status if
    ``exc`` is given (its mesh error code as ``agp.error_code``)."""
    if span is not None:
        _finish(span, exc)


@contextmanager
def _spanning(span: Span, *, current: bool = True) -> Iterator[Span]:
    """The body runs inside ``span`` (made current unless ``current`` is false); the span
    ends when it does, recording the exception that ended it, if any."""
    token = otel_context.attach(trace.set_span_in_context(span)) if current else None
    exc: BaseException | None = None
    try:
        yield span
    except BaseException as e:
        exc = e
        raise
    finally:
        if token is not None:
            otel_context.detach(token)
        _finish(span, exc)


def client_span(dest: str, action: str, pattern: str = "request"
                ) -> AbstractContextManager[Span]:
    """The caller's side of a call; inside it, :func:`inject` gives the header value."""
    return _spanning(start_client_span(dest, action, pattern))


def start_server_span(service: str, action: str, traceparent: str | None,
                      instance: str = "") -> Span:
    """Start the agent's span for one inbound call, child of the caller's remote span.

    Agents start and end a call in different callbacks (``_on_inbound``, ``_finish``), so
    this is a pair of functions; :func:`server_span` is the ``with`` form of the same.
    """
    return tracer().start_span(f"handle {service}/{action}", context=extract(traceparent),
                               kind=SpanKind.SERVER,
                               attributes={"agp.service": service, "agp.action": action,
                                           "agp.instance": instance})


def server_span(action: str, traceparent: str | None, service: str = "",
                instance: str = "") -> AbstractContextManager[Span]:
    """``with server_span(...)``: the handler runs with the span current (nested calls are
    its children)."""
    return _spanning(start_server_span(service, action, traceparent, instance))


def use_span(span: Span | None) -> object | None:
    """Make ``span`` current (returns a token for :func:`release`); None when no span."""
    if span is None:
        return None
    return otel_context.attach(trace.set_span_in_context(span))


def release(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def router_span(dest: str, traceparent: str | None, **attributes: Any
                ) -> AbstractContextManager[Span]:
    """A span for work the router does itself (its own service, a denial), child of the
    caller's span."""
    return _spanning(tracer().start_span(f"route {dest}", context=extract(traceparent),
                                         kind=SpanKind.INTERNAL,
                                         attributes={"agp.destination": dest, **attributes}),
                     current=False)


def traceparent_of(header: bytes) -> str:
    """The traceparent in an encoded Envelope ('' when absent or undecodable)."""
    if not header:
        return ""
    from proto import agp_pb2

    try:
        return agp_pb2.Envelope.FromString(header).traceparent
    except Exception:
        return ""


def router_hop(header: bytes, service: str, instance: str, start_ns: int, end_ns: int,
               error: str | None = None) -> None:
    """Record one routed request as a span after the fact (the router's hot loop keeps only
    ``start_ns`` for requests flagged :data:`TRACED_FLAG`, and calls this at the reply).

    The span is a child of the client's span and a sibling of the agent's: the router never
    rewrites the header, so the agent continues the client's context.
    """
    if not ENABLED:
        return
    tp = traceparent_of(header)
    if not tp:
        return
    span = tracer().start_span(f"route {service}", context=extract(tp), kind=SpanKind.INTERNAL,
                               start_time=start_ns,
                               attributes={"agp.service": service, "agp.instance": instance})
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


async def observed_request(amesh: Any, dest: str, action: str, data: Any,
                           kwargs: dict[str, Any]) -> Any:
    """``AsyncMesh.request`` with a client span (its traceparent on the wire) and the call's
    latency and outcome in ``mesh.metrics.CLIENT``; the unobserved path never comes here."""
    from mesh import metrics

    stats = metrics.CLIENT
    span = None
    if ENABLED and not kwargs.get("traceparent"):
        span = start_client_span(dest, action)
        kwargs = {**kwargs, "traceparent": inject(span)}
    if stats is not None:
        stats.track(amesh)
    t0 = time.perf_counter()
    exc: BaseException | None = None
    try:
        return await amesh._request(dest, action, data, **kwargs)
    except BaseException as e:
        exc = e
        raise
    finally:
        if stats is not None:
            stats.done(dest, time.perf_counter() - t0,
                       "ok" if exc is None else metrics.outcome_of(exc, "error"))
        end_span(span, exc)


# ---------------------------------------------------------------------- workflows
def run_span(run_id: str, workflow: str, traceparent: str | None = None
             ) -> AbstractContextManager[Span]:
    """One workflow run is one trace: its steps (:func:`step_span`) are children, and every
    agent call a step makes is a grandchild through the header."""
    return _spanning(tracer().start_span(
        f"workflow {workflow}", context=extract(traceparent), kind=SpanKind.INTERNAL,
        attributes={"agp.run_id": run_id, "agp.workflow": workflow}))


def step_span(run_id: str, step: str, agent: str, attempt: int = 1
              ) -> AbstractContextManager[Span]:
    return _spanning(tracer().start_span(
        f"step {step}", kind=SpanKind.INTERNAL,
        attributes={"agp.run_id": run_id, "agp.step": step, "agp.agent": agent,
                    "agp.attempt": attempt}))


def read_trace_file(path: str) -> list[dict[str, Any]]:
    """Spans written by :class:`JsonLinesExporter` (a partial last line is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out
