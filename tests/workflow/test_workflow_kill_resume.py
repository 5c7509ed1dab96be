"""kill -9 the process running a workflow, resume it in a new one: finished steps stay done."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mesh.workflow import RunState, StepState, open_store

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("crash_worker.py")
DEADLINE = 60.0


def step_states(db: Path) -> dict[str, str]:
    """What the store says now, read over a separate connection ({} until it exists)."""
    if not db.exists():
        return {}
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return dict(conn.execute("SELECT name, state FROM steps").fetchall())
        finally:
            conn.close()
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes],
             work: Path) -> None:
    """Poll ``cond`` until true; fail if the worker dies first or the deadline passes."""
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): "
                                 f"{(work / 'worker.err').read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def spawn(work: Path, mode: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (work / "worker.out").open("ab") as out, (work / "worker.err").open("ab") as err:
        return subprocess.Popen([sys.executable, str(WORKER), mode, str(work), *extra],
                                cwd=REPO, env=env, stdout=out, stderr=err)


def test_kill_9_mid_run_then_resume_skips_finished_steps(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = spawn(tmp_path, "start")
    try:
        wait_for(lambda: step_states(db) == {"collect": "succeeded", "train": "running",
                                             "deploy": "pending"},
                 "collect succeeded and train running", first, tmp_path)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=DEADLINE) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=DEADLINE)

    with open_store(str(db)) as store:
        (run,) = store.list_runs()
        assert run.state is RunState.RUNNING
        assert store.step_states(run.id)["collect"].state is StepState.SUCCEEDED
        assert store.load_output(run.id, "collect") is not None

    (tmp_path / "marker").touch()
    second = spawn(tmp_path, "resume", run.id)
    try:
        assert second.wait(timeout=DEADLINE) == 0, (tmp_path / "worker.err").read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=DEADLINE)

    result = json.loads((tmp_path / "worker.out").read_text().strip().splitlines()[-1])
    assert result["id"] == run.id
    assert result["state"] == "succeeded"
    expected_sum = float(sum(range(100_000)))
    assert result["outputs"] == {"deployed": {"checksum": expected_sum, "rows": 569}}
    log = (tmp_path / "steps.log").read_text().splitlines()
    assert log == ["collect 1", "train 1", "train 2", "deploy 1"]
    with open_store(str(db)) as store:
        steps = store.step_states(run.id)
        assert all(s.state is StepState.SUCCEEDED for s in steps.values())
        assert (steps["collect"].attempt, steps["train"].attempt) == (1, 2)
        assert store.get_run(run.id).state is RunState.SUCCEEDED
