"""Scratch: with the hooks applied, plain agents (agents.echo via the runner) and the router."""
from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from agents.procs import agent_process, router_process
from mesh import Mesh, telemetry
from tests.helpers import wait_for


def test_three_process_trace_with_router_hop(spawn, mesh_home, enroll, tmp_path, monkeypatch):
    tf = tmp_path / "spans.jsonl"
    monkeypatch.setenv("AGP_TRACE_FILE", str(tf))
    rt = spawn(router_process(extra=["--auth-port", "0"]))
    ep = rt.ready_info["router"]
    ident = enroll("echo-h", "test/h")
    agent = spawn(agent_process("agents.echo", ep, name="h1", extra=[
        "--namespace", "test/h", "--instance", "h1", "--identity", ident,
        "--metrics-port", "0"]))
    assert agent.ready_info["metrics_port"]
    telemetry.setup_tracing("test-client")
    try:
        with Mesh.connect(ep, identity="tester") as m:
            with telemetry.client_span("test/h/echo", "root") as root:
                for _ in range(3):
                    assert m.request("test/h/echo", "echo", 1) == 1
                assert m.request("test/h/echo", "sleep", 0.01)["slept"] == 0.01
        tid = f"{root.context.trace_id:032x}"

        def spans():
            got = [s for s in telemetry.read_trace_file(str(tf)) if s["trace_id"] == tid]
            return got if len(got) >= 1 + 4 * 3 else None
        got = wait_for(spans, 10, message="spans from 3 processes")
    finally:
        telemetry.shutdown_tracing()
    clients = [s for s in got if s["kind"] == "CLIENT" and not s["name"].endswith("/root")]
    servers = [s for s in got if s["kind"] == "SERVER"]
    hops = [s for s in got if s["name"].startswith("route ")]
    assert len(clients) == 4
    assert len(servers) == 4
    assert len(hops) == 4
    ids = {c["span_id"] for c in clients}
    assert all(s["parent_span_id"] in ids for s in servers + hops)
    assert all(c["parent_span_id"] == f"{root.context.span_id:016x}" for c in clients)
    assert {s["pid"] for s in got} >= {rt.pid, agent.pid}
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{agent.ready_info['metrics_port']}/metrics").read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    served = [s for s in fams["agp_agent_served"].samples if s.name == "agp_agent_served_total"]
    assert served[0].value >= 4
    assert "agp_agent_handler_duration_seconds" in fams


def test_router_drain_action(spawn, mesh_home, enroll):
    rt = spawn(router_process(extra=["--auth-port", "0"]))
    ep = rt.ready_info["router"]
    ident = enroll("echo-d", "test/d")
    spawn(agent_process("agents.echo", ep, name="d1", extra=[
        "--namespace", "test/d", "--instance", "d1", "--identity", ident]))
    with Mesh.connect(ep, identity="tester") as m:
        out = m.request("agp/router", "drain", {"instance": "test/d/echo/d1"})
        assert out == {"instance": "test/d/echo/d1", "accepting": False}
        svc = [s for s in m.request("agp/router", "services") if s["service"] == "test/d/echo"]
        assert svc[0]["instances"][0]["accepting"] is False
