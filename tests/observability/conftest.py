"""Fixtures for the observability tests: instrumented agents, a control plane, HTTP helpers.

Everything runs as real processes on 127.0.0.1 with ephemeral ports, on top of the
``router``/``enroll``/``spawn`` fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.procs import ManagedProcess
from security.home import Home, enroll_identity

HERE = Path(__file__).resolve().parent
HELPER = HERE / "instrumented_echo.py"


@dataclass
class ObsAgent:
    proc: ManagedProcess
    service: str
    instance: str
    metrics_port: int
    trace_file: Path


@pytest.fixture
def obs_agent(spawn: Callable[..., ManagedProcess], router: ManagedProcess,
              enroll: Callable[..., str], tmp_path: Path) -> Callable[..., ObsAgent]:
    """Start an instrumented echo agent process (spans to a JSON-lines file, /metrics)."""
    count = [0]

    def start(name: str = "echo", namespace: str = "test/obs", capacity: int = 16) -> ObsAgent:
        count[0] += 1
        instance = f"{name}-{count[0]}"
        identity = enroll(f"obs-{instance}", namespace)
        trace_file = tmp_path / f"spans-{instance}.jsonl"
        proc = ManagedProcess(instance, [str(HELPER), "--endpoint", router.ready_info["router"],
                                         "--namespace", namespace, "--name", name,
                                         "--instance", instance, "--capacity", str(capacity),
                                         "--identity", identity],
                              env={"AGP_TRACE_FILE": str(trace_file), "AGP_METRICS_PORT": "0",
                                   "AGP_INSTANCE": instance})
        spawn(proc)
        port = proc.ready_info.get("metrics_port") or proc.wait_event("metrics", 15)["port"]
        return ObsAgent(proc, f"{namespace}/{name}", instance, int(port), trace_file)

    return start


@pytest.fixture
def control_plane(spawn: Callable[..., ManagedProcess], router: ManagedProcess,
                  mesh_home: Home) -> Callable[..., ManagedProcess]:
    """Start ``python -m router.control`` as a mesh client of the test router."""

    def start(store: str | None = None) -> ManagedProcess:
        enroll_identity(mesh_home, "agp-control", roles=("admin",))
        args = ["-m", "router.control", "--endpoint", router.ready_info["router"],
                "--port", "0", "--identity", "agp-control", "--interval", "0.5",
                *(["--store", store] if store else [])]
        return spawn(ManagedProcess("control", args))

    return start
