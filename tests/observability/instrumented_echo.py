"""An echo agent with the observability hooks applied from outside, run as a real process.

Until the lead wires ``mesh.telemetry`` and ``mesh.metrics`` into ``agents/base.py``,
``agents/runner.py`` and ``mesh/aio.py``, this subclass calls exactly the functions those
hooks will call, at the same points (``_on_inbound`` start, ``_finish`` end), so the tests
exercise the real spans and metrics across processes:

* tracing: ``setup_tracing`` (``AGP_TRACE_FILE`` makes it write JSON lines), a server span
  per inbound call continuing the caller's ``traceparent``, current while the handler runs;
* metrics: ``agent_metrics(self)`` and a ``/metrics`` server (``AGP_METRICS_PORT``); the
  port is printed as a JSON line ``{"event": "metrics", "port": N}`` after the ready line;
* ``relay``: calls another service with a client span and the header, as the AsyncMesh hook
  will, so a trace crosses three processes (test client -> this agent -> another agent).

Once the hooks are in the base class (``Context`` has a ``span`` slot), this helper steps
aside: the runner and the base class do all of it, and the tests run unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agents.base import Context, action  # noqa: E402
from agents.echo import Echo  # noqa: E402
from mesh import metrics, telemetry  # noqa: E402
from mesh.wire import Cmd  # noqa: E402
from proto import agp_pb2  # noqa: E402

_PATTERN = {Cmd.REQUEST: "request", Cmd.SEND: "send", Cmd.STREAM_OPEN: "stream"}
HOOKED = "span" in Context.__slots__  # the lead applied the hooks to agents/base.py


class InstrumentedEcho(Echo):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._calls: dict[tuple[bytes, int], tuple[Any, float]] = {}
        if not HOOKED:
            metrics.agent_metrics(self)

    def _on_inbound(self, cmd: int, flags: int, value: int, ident: int, msg: list[bytes]) -> None:
        pattern = _PATTERN.get(cmd)
        if HOOKED or pattern is None or len(msg) < 3 or self.draining:
            super()._on_inbound(cmd, flags, value, ident, msg)
            return
        env = agp_pb2.Envelope.FromString(msg[2]) if msg[2] else agp_pb2.Envelope()
        span = (telemetry.start_server_span(self.service, env.action, env.traceparent,
                                            self.instance_name) if telemetry.ENABLED else None)
        self.metrics.inbound(pattern, sum(len(f) for f in msg[3:]))
        assert self.loop is not None
        self._calls[(msg[1], ident)] = (span, self.loop.time())
        token = telemetry.use_span(span)  # tasks created now inherit the span as current
        try:
            super()._on_inbound(cmd, flags, value, ident, msg)
        finally:
            telemetry.release(token)

    def _finish(self, ctx: Context, reply: bool, result: Any, exc: BaseException | None) -> None:
        entry = self._calls.pop((ctx.crid, ctx.ident), None)
        if entry is not None:
            span, started = entry
            telemetry.end_span(span, exc)
            assert self.loop is not None
            self.metrics.handled(ctx.action, self.loop.time() - started, exc)
        super()._finish(ctx, reply, result, exc)

    async def on_start(self) -> None:
        if HOOKED:
            return  # the runner serves /metrics and names the port in the ready line
        port = metrics.serve_metrics(metrics.metrics_port_from_env() or 0)
        # printed after the ready line (the runner prints it right after on_start returns)
        asyncio.get_running_loop().call_soon(
            lambda: print(json.dumps({"event": "metrics", "port": port}), flush=True))

    @action()
    async def relay(self, data: Any, ctx: Context) -> Any:
        """Call ``data["to"]`` echo with a client span (as the AsyncMesh hook will)."""
        dest = str(data["to"])
        span = (telemetry.start_client_span(dest, "echo")
                if telemetry.ENABLED and not HOOKED else None)
        t0 = time.perf_counter()
        try:
            reply = await self.mesh.request(dest, "echo", data.get("payload"), timeout=5.0,
                                            traceparent=telemetry.inject(span) if span else None)
        except BaseException as exc:
            telemetry.end_span(span, exc)
            raise
        telemetry.end_span(span)
        return {"relayed": reply, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    if not HOOKED:
        telemetry.setup_tracing(f"echo:{os.environ.get('AGP_INSTANCE', os.getpid())}")
    InstrumentedEcho.main()
