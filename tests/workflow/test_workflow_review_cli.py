"""``agp workflow`` as a user drives it, between real processes (a router, an agent, the CLI):
its exit code tells a detached run from a failed one, and it finds the artifacts where
``AGP_ARTIFACTS`` says they are, as the orchestrator service does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.procs import ManagedProcess, agent_process
from agents.workflow_cli import summarize
from mesh.workflow import (
    ArtifactStore,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    WorkflowRunner,
    open_store,
)

from ._helpers import DEADLINE, run_async

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "test/wfcli"
SERVICE = f"{NAMESPACE}/slow_step"


def _slow_agent(router: ManagedProcess, spawn: Callable[..., ManagedProcess],
                enroll: Callable[..., str], name: str) -> None:
    identity = enroll(name, NAMESPACE)
    spawn(agent_process("tests.workflow.slow_step_agent", router.ready_info["router"],
                        name=name, extra=["--namespace", NAMESPACE, "--instance", name,
                                          "--identity", identity]))


def _agp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=DEADLINE * 2, cwd=REPO, check=False,
                          env={**os.environ, **(env or {})})


def test_a_run_left_running_by_timeout_exits_as_detached_not_failed(
        router: ManagedProcess, spawn: Callable[..., ManagedProcess],
        enroll: Callable[..., str], tmp_path: Path) -> None:
    """``--timeout`` stops waiting and leaves the run resumable (no owner, its step back to
    pending): that is the documented "detached" (143), not "failed or cancelled" (1)."""
    _slow_agent(router, spawn, enroll, "slowcli1")
    spec = tmp_path / "hang.json"
    spec.write_text(json.dumps({"name": "hang", "steps": {"hang": {
        "agent": SERVICE, "params": {"seconds": 30}}}}))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    done = _agp("workflow", "run", str(spec), "--store", url, "--endpoint",
                router.ready_info["router"], "--timeout", "1")
    with open_store(url) as store:
        (run,) = store.list_runs()
        steps = store.step_states(run.id)
    assert (run.state, run.owner) == (RunState.RUNNING, None), done.stderr
    assert steps["hang"].state is StepState.PENDING
    assert f"agp workflow resume {run.id}" in done.stderr
    assert done.returncode == 143, done.stderr


def test_a_cli_resume_reads_the_artifacts_agp_artifacts_names(
        router: ManagedProcess, spawn: Callable[..., ManagedProcess],
        enroll: Callable[..., str], tmp_path: Path) -> None:
    """A run the orchestrator service started (its artifacts under ``AGP_ARTIFACTS``) and
    left running is resumed with ``agp workflow resume`` in that same environment: the
    large output of its finished step is found, and the run succeeds."""
    _slow_agent(router, spawn, enroll, "slowcli2")
    shared = tmp_path / "shared-artifacts"
    url = f"sqlite:///{tmp_path / 'db' / 'runs.db'}"
    big = np.arange(50_000, dtype=np.float64).reshape(10_000, 5)  # 400 kB: an artifact
    spec = {"name": "spill", "steps": {
        "collect": {"agent": "x"},
        "use": {"agent": SERVICE, "action": "hang", "depends_on": ["collect"],
                "params": {"seconds": 0}}}}

    async def service_then_gone() -> str:
        """What the service does with AGP_ARTIFACTS set, until it stops (detaches)."""
        reached = asyncio.Event()

        async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                            avoid: set[str]) -> StepResult:
            if step.name == "collect":
                return StepResult({"X": big}, "x/1")
            reached.set()
            await asyncio.Event().wait()  # until the service stops
            raise AssertionError("unreachable")

        with open_store(url) as store:
            runner = WorkflowRunner(store, call_step, artifact_store=ArtifactStore(shared))
            run_id = await runner.start(spec)
            await asyncio.wait_for(reached.wait(), DEADLINE)
            await runner.close()
            return run_id

    run_id = run_async(service_then_gone())
    with open_store(url) as store:
        assert store.step_states(run_id)["collect"].output_refs  # in the shared directory
    done = _agp("workflow", "resume", run_id, "--store", url, "--endpoint",
                router.ready_info["router"], env={"AGP_ARTIFACTS": str(shared)})
    with open_store(url) as store:
        record = store.get_run(run_id)
    assert record.state is RunState.SUCCEEDED, record.error
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "db" / "artifacts").exists() or not any(
        (tmp_path / "db" / "artifacts").glob("??/*"))


@pytest.mark.parametrize("output", [
    {"X": np.zeros(3), "source": "a 1-D X"},
    {"metrics": {"accuracy": "high"}, "sha256": "ab"},
    {"X_train": np.zeros((4, 2))},  # no X_test beside it
])
def test_an_output_that_only_looks_like_a_known_one_is_summarized_by_its_keys(output) -> None:
    line = summarize(output)
    assert line.startswith("keys "), line
    assert sorted(output)[0] in line


def test_known_outputs_are_still_summarized_as_themselves() -> None:
    assert summarize({"X": np.zeros((5, 3)), "source": "iris"}) == \
        "dataset iris 5 rows x 3 features"
    assert summarize({"metrics": {"acc": 0.91234}, "sha256": "ab", "model": "m"}) == \
        "model m: acc=0.9123"


def test_resuming_a_run_that_is_not_there_is_bad_usage_said_at_once(tmp_path: Path) -> None:
    """Exit 2 (bad usage), before looking for a router: none answers at this endpoint
    (looked for first, the answer was "no router answered", exit 1, ten seconds later)."""
    out = subprocess.run(
        [sys.executable, "-m", "agents.workflow_cli", "resume", "nope",
         "--store", f"sqlite:///{tmp_path / 'runs.db'}", "--endpoint", "tcp://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "AGP_MDNS": "0"})
    assert out.returncode == 2, out.stderr
    assert "nope" in out.stderr
    assert "no router answered" not in out.stderr
