"""An attempt in flight when the process driving the run died counts against the step's
retries on resume: a step that kills its orchestrator every time fails, instead of running
again on every restart forever. A graceful detach (``close``) counts nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from mesh.workflow import (
    ArtifactStore,
    Event,
    EventKind,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    WorkflowRunner,
    load_spec,
    open_store,
)

from ._helpers import run_async
from .test_workflow_kill_resume import DEADLINE, spawn, step_states

SPEC = {"name": "poison", "steps": {
    "train": {"agent": "x"},
    "tune": {"agent": "x", "retries": 1},
    "deploy": {"agent": "x", "depends_on": ["train", "tune"]},
}}
EARLIER_ME = f"{socket.gethostname()}:{os.getpid()}:0-earlier"  # this pid, a dead incarnation


def test_an_interrupted_step_without_retries_fails_on_resume(tmp_path: Path,
                                                             artifacts: ArtifactStore) -> None:
    calls: list[tuple[str, int]] = []
    events: list[Event] = []

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        calls.append((step.name, attempt))
        return StepResult(step.name, "x/1")

    with open_store(str(tmp_path / "runs.db")) as store:
        run = store.create_run(load_spec(SPEC), owner=EARLIER_ME)
        store.apply(run.id, steps={name: {"state": StepState.RUNNING, "attempt": 1,
                                          "started": time.time()} for name in ("train", "tune")})
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts,
                                on_event=events.append)

        async def resume() -> Any:
            return await runner.wait(await runner.resume(run.id))

        record = run_async(resume())
        steps = store.step_states(run.id)
        assert record.state is RunState.FAILED
        assert record.error is not None
        assert record.error.startswith("step 'train' failed: interrupted: the process driving "
                                       f"the run ({EARLIER_ME}) stopped during attempt 1")
        assert calls == []  # nothing ran again
        assert (steps["train"].state, steps["train"].failures) == (StepState.FAILED, 1)
        assert steps["tune"].failures == 1  # counted too, though it had a retry left
        assert steps["deploy"].state is StepState.SKIPPED
        assert events[-1].kind is EventKind.RUN_FINISHED
        assert events[-1].run_state is RunState.FAILED

        # resuming the failed run is a person's decision: a fresh budget, the steps run
        record = run_async(resume())
        assert record.state is RunState.SUCCEEDED
        assert sorted(calls) == [("deploy", 1), ("train", 2), ("tune", 2)]


def test_a_detached_step_is_not_counted(tmp_path: Path, artifacts: ArtifactStore) -> None:
    started = asyncio.Event()

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        if attempt == 1 and step.name == "train":
            started.set()
            await asyncio.Event().wait()  # until the runner detaches
        return StepResult(step.name, "x/1")

    async def main() -> Any:
        with open_store(str(tmp_path / "runs.db")) as store:
            first = WorkflowRunner(store, call_step, artifact_store=artifacts)
            run_id = await first.start(SPEC)
            await asyncio.wait_for(started.wait(), DEADLINE)
            await first.close()  # a graceful stop (SIGTERM, a redeploy): nothing failed
            second = WorkflowRunner(store, call_step, artifact_store=artifacts)
            record = await second.wait(await second.resume(run_id))
            return record, store.step_states(run_id)["train"]

    record, train = run_async(main())
    assert record.state is RunState.SUCCEEDED
    assert (train.attempt, train.failures) == (2, 0)


def _kill_when_training(work: Path, proc: subprocess.Popen[bytes], attempt: int) -> None:
    """Wait until ``train`` runs its ``attempt`` (the worker's log says so), then kill -9."""
    deadline = time.monotonic() + DEADLINE
    log = work / "steps.log"
    while not (log.exists() and f"train {attempt}" in log.read_text().splitlines()
               and step_states(work / "runs.db").get("train") == "running"):
        assert proc.poll() is None, (work / "worker.err").read_text()
        assert time.monotonic() < deadline, f"train attempt {attempt} never started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL


def test_a_step_that_kills_its_orchestrator_every_time_runs_out_of_retries(
        tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn(tmp_path, "start"))
        _kill_when_training(tmp_path, procs[-1], 1)
        with open_store(str(tmp_path / "runs.db")) as store:
            (run,) = store.list_runs()
        procs.append(spawn(tmp_path, "resume", run.id))  # train has retries=1: runs again
        _kill_when_training(tmp_path, procs[-1], 2)
        procs.append(spawn(tmp_path, "resume", run.id))  # no retry left: the run fails
        deadline = time.monotonic() + DEADLINE
        while procs[-1].poll() is None:
            log = (tmp_path / "steps.log").read_text().splitlines()
            assert "train 3" not in log, "the poison step ran a third time"
            assert time.monotonic() < deadline, "the last resume did not end"
            time.sleep(0.02)
        assert procs[-1].returncode == 0, (tmp_path / "worker.err").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=DEADLINE)
    result = json.loads((tmp_path / "worker.out").read_text().strip().splitlines()[-1])
    assert result["state"] == "failed"
    assert "interrupted" in result["error"]
    assert "stopped during attempt 2" in result["error"]
    assert (tmp_path / "steps.log").read_text().splitlines() == [
        "collect 1", "train 1", "train 2"]
    with open_store(str(tmp_path / "runs.db")) as store:
        train = store.step_states(run.id)["train"]
        assert (train.state, train.attempt, train.failures) == (StepState.FAILED, 2, 2)
