"""Prometheus metrics scraped over HTTP from real processes and parsed with prometheus-client's
parser: the names exist, carry the right types and labels, follow the conventions, and move
with the traffic we send."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agents.procs import ManagedProcess, router_process
from mesh import Mesh, metrics
from mesh.errors import HandlerError, NoSuchAction, NoSuchService
from tests.helpers import wait_for
from tests.observability.obs_helpers import make_run

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The value of one sample (by full sample name and labels); KeyError when absent."""
    name = re.sub(r"_(total|count|sum|bucket)$", "", sample)
    for fam_name in (sample, name):
        fam = families.get(fam_name)
        if fam is None:
            continue
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{sample}{labels}")


def check_conventions(families: dict[str, Any]) -> None:
    """Our families: snake_case with the agp_ prefix, counters end in _total, histograms in
    a base unit, gauges never look like counters."""
    ours = {n: f for n, f in families.items() if n.startswith("agp_")}
    assert ours, "no agp_ metric at all"
    for name, fam in ours.items():
        assert NAME_RE.match(name), name
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), name
        if fam.type == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
            if fam.samples:  # a family with no series yet has only HELP and TYPE
                assert {"_bucket", "_count", "_sum"} <= {s.name[len(name):] for s in fam.samples}
        if fam.type == "gauge":
            assert not name.endswith("_total"), name
        assert fam.documentation, f"{name} has no HELP"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_agent_process_metrics(router: ManagedProcess, obs_agent: Callable[..., Any]) -> None:
    agent = obs_agent("metered", capacity=16)
    with Mesh.connect(router.ready_info["router"], identity="tester") as m:
        for i in range(20):
            assert m.request(agent.service, "echo", "x" * 100) == "x" * 100
        with pytest.raises(HandlerError):
            m.request(agent.service, "fail", "boom")
        with pytest.raises(NoSuchAction):
            m.request(agent.service, "no_such_action")
        m.send(agent.service, "record", {"n": 1})
        wait_for(lambda: m.request(agent.service, "recorded_items"), 10, message="send arrived")
    fams = wait_for(lambda: (f := scrape(agent.metrics_port)) and value(
        f, "agp_agent_messages_total", pattern="send") >= 1 and f, 10, message="send counted")
    svc = agent.service
    assert value(fams, "agp_agent_messages_total", service=svc, pattern="request") >= 23
    assert value(fams, "agp_agent_received_bytes_total", service=svc) >= 20 * 100
    assert value(fams, "agp_agent_served_total", service=svc) >= 21
    assert value(fams, "agp_agent_failed_total", service=svc) == 1
    assert value(fams, "agp_agent_dropped_total", service=svc, reason="no_such_action") == 1
    assert value(fams, "agp_agent_capacity", service=svc) == 16
    assert value(fams, "agp_agent_inflight", service=svc) == 0
    assert value(fams, "agp_agent_handler_duration_seconds_count", service=svc, action="echo",
                 outcome="ok") == 20
    assert value(fams, "agp_agent_handler_duration_seconds_count", action="fail",
                 outcome="handler_error") == 1
    assert value(fams, "agp_agent_handler_duration_seconds_bucket", action="echo", outcome="ok",
                 le="+Inf") == 20
    assert fams["agp_agent_handler_duration_seconds"].type == "histogram"
    assert "process_cpu_seconds" in fams  # the default registry's process metrics too
    check_conventions(fams)


def test_client_metrics_and_breaker_state(router: ManagedProcess,
                                          start_echo: Callable[..., ManagedProcess]) -> None:
    """The client side as the AsyncMesh hook records it, served by this (real) process."""
    start_echo(namespace="test/ns")
    registry = CollectorRegistry()  # a fresh one: the process-wide CLIENT stays untouched
    stats = metrics.ClientStats()
    registry.register(metrics.StatsCollector([stats]))
    port = metrics.serve_metrics(0, registry=registry)
    with Mesh.connect(router.ready_info["router"], identity="tester") as m:
        stats.track(m._amesh)
        for _ in range(10):
            stats.sent("request", 5)
            t0 = time.perf_counter()
            m.request("test/ns/echo", "echo", "hello")
            stats.done("test/ns/echo", time.perf_counter() - t0, "ok", 6)
        for _ in range(5):  # five failures in a row open the breaker of that destination
            with pytest.raises(NoSuchService):
                m.request("test/ns/missing", "echo", 1)
            stats.done("test/ns/missing", 0.001, metrics.outcome_of(NoSuchService("x")))
        fams = scrape(port)
    assert value(fams, "agp_client_messages_total", pattern="request") == 10
    assert value(fams, "agp_client_sent_bytes_total", pattern="request") == 50
    assert value(fams, "agp_client_received_bytes_total") == 60
    assert value(fams, "agp_request_duration_seconds_count", service="test/ns/echo",
                 outcome="ok") == 10
    assert value(fams, "agp_request_duration_seconds_sum", service="test/ns/echo",
                 outcome="ok") > 0
    assert value(fams, "agp_client_request_errors_total", code="no_such_service") == 5
    assert value(fams, "agp_breaker_state", destination="test/ns/missing") == 2
    assert value(fams, "agp_breaker_state", destination="test/ns/echo") == 0
    assert value(fams, "agp_client_pending_requests") == 0
    check_conventions(fams)


def test_router_and_control_plane_metrics(spawn: Callable[..., ManagedProcess],
                                          mesh_home: Any, enroll: Callable[..., str],
                                          tmp_path: Any) -> None:
    """The router's /metrics (its own port) and the control plane's /metrics."""
    from agents.procs import agent_process
    from security.home import enroll_identity

    mport = free_port()
    rt = spawn(router_process(extra=["--auth-port", "0", "--metrics-port", str(mport)]))
    ep = rt.ready_info["router"]
    ident = enroll("echo-m", "test/m")
    spawn(agent_process("agents.echo", ep, name="echo-m",
                        extra=["--namespace", "test/m", "--instance", "m1", "--identity", ident]))
    enroll_identity(mesh_home, "agp-control", roles=("admin",))
    store = f"sqlite:///{tmp_path}/runs.db"
    make_run(store)
    control = spawn(ManagedProcess("control", ["-m", "router.control", "--endpoint", ep,
                                               "--port", "0", "--identity", "agp-control",
                                               "--interval", "0.3", "--store", store]))
    with Mesh.connect(ep, identity="tester") as m:
        for _ in range(5):
            m.request("test/m/echo", "echo", 1)
        with pytest.raises(NoSuchService):
            m.request("test/m/nothing", "echo", 1)
    r = scrape(mport)
    assert value(r, "agp_router_messages_total", pattern="request") >= 5
    assert value(r, "agp_router_drops_total", reason="no_such_service") >= 1
    assert value(r, "agp_router_instances", service="test/m/echo") == 1
    for name in ("agp_router_queue_depth", "agp_router_inflight", "agp_router_denials",
                 "agp_router_auth_failures", "agp_router_received_bytes", "agp_router_peers"):
        assert name in r, name
    assert value(r, "agp_token_endpoint_refused_total", reason="busy") == 0  # its own family
    check_conventions(r)
    cport = control.ready_info["port"]
    c = wait_for(lambda: (f := scrape(cport)) and "agp_mesh_instances" in f and any(
        s.labels.get("service") == "test/m/echo" for s in f["agp_mesh_instances"].samples)
        and f, 15, message="control plane sees the agent")
    assert value(c, "agp_control_router_up") == 1
    assert value(c, "agp_mesh_instances", service="test/m/echo") == 1
    assert value(c, "agp_mesh_capacity", service="test/m/echo") >= 1
    assert value(c, "agp_workflow_runs", state="running") == 1
    assert value(c, "agp_workflow_steps", state="pending") == 2
    check_conventions(c)
