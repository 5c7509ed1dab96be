"""Who drives a run: taking one over is a compare-and-swap in the store, a run whose owner
may be alive is not taken, and a driver whose run was taken over or cancelled elsewhere
stops at its next write (two store handles on one SQLite file, or two processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.workflow import (
    ArtifactStore,
    RunConflict,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
    load_spec,
    open_store,
)
from mesh.workflow.sqlite_store import SqliteStore

from ._helpers import DEADLINE, run_async
from .crash_worker import SPEC as WORKER_SPEC

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("crash_worker.py")
SPEC = {"name": "two", "steps": {"train": {"agent": "x", "retries": 1, "backoff": 0},
                                 "deploy": {"agent": "x", "depends_on": ["train"]}}}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Store:
    """The compare-and-swap is SQL: checked on both back ends."""
    backend: Store = request.getfixturevalue(f"{request.param}_store")
    return backend


class Gated:
    """A ``call_step`` that logs each call and holds ``train`` until ``gate`` is set."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.log: list[str] = []
        self.started = asyncio.Event()

    async def __call__(self, step: StepSpec, inputs: dict[str, Any], attempt: int,
                       avoid: set[str]) -> StepResult:
        self.log.append(step.name)
        if step.name == "train":
            self.started.set()
            await self.gate.wait()
        return StepResult({"from": step.name}, "x/1")


class RaceAfterRead(SqliteStore):
    """A real SQLite store that lets ``rival`` write once, after the resuming runner has
    read the run and its steps and before it claims it: the race, made deterministic."""

    def __init__(self, path: Path, rival: Callable[[], None]) -> None:
        super().__init__(path)
        self.rival: Callable[[], None] | None = rival

    def step_states(self, run_id: str) -> Any:
        steps = super().step_states(run_id)
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
        return steps


def test_claim_is_a_compare_and_swap(store: Store) -> None:
    run = store.create_run(load_spec(SPEC), owner="host-a:1:x")
    seen = store.get_run(run.id)
    claim = {"state": seen.state, "owner": seen.owner, "updated": seen.updated}
    store.apply(run.id, run={"owner": "host-b:2:y"}, expect=claim)
    with pytest.raises(RunConflict, match="owner host-b:2:y") as lost:
        store.apply(run.id, run={"owner": "host-c:3:z"},
                    steps={"train": {"state": StepState.RUNNING}}, expect=claim)
    assert (lost.value.state, lost.value.owner) == (RunState.RUNNING, "host-b:2:y")
    assert store.get_run(run.id).owner == "host-b:2:y"  # the loser wrote nothing
    assert store.step_states(run.id)["train"].state is StepState.PENDING
    store.apply(run.id, run={"owner": None}, expect={"owner": "host-b:2:y"})
    store.apply(run.id, run={"owner": "host-c:3:z"}, expect={"owner": None})
    with pytest.raises(ValueError, match="unknown expected run field"):
        store.apply(run.id, run={"owner": None}, expect={"owner; DROP": None})
    assert store.get_run(run.id).owner == "host-c:3:z"


def test_a_resume_that_loses_the_race_drives_nothing(tmp_path: Path,
                                                     artifacts: ArtifactStore) -> None:
    db = tmp_path / "runs.db"
    with SqliteStore(db) as rival_store:
        run = rival_store.create_run(load_spec(SPEC), owner=None)  # released: anyone may take it

        def rival_claims() -> None:
            rival_store.apply(run.id, run={"owner": "rival:1:r"}, expect={"owner": None})

        calls = Gated(asyncio.Event())
        with RaceAfterRead(db, rival_claims) as mine:
            runner = WorkflowRunner(mine, calls, artifact_store=artifacts, owner="me:2:m")
            with pytest.raises(RunConflict, match="driven by another owner"):
                run_async(runner.resume(run.id))
            assert runner.active_runs == []
        assert calls.log == []
        assert rival_store.get_run(run.id).owner == "rival:1:r"
        assert {s.state for s in rival_store.step_states(run.id).values()} == {
            StepState.PENDING}


def test_a_run_whose_owner_may_be_alive_is_not_taken_unless_forced(
        tmp_path: Path, artifacts: ArtifactStore) -> None:
    with open_store(str(tmp_path / "runs.db")) as store:
        run = store.create_run(load_spec(SPEC), owner="other-host:1:abc")
        calls = Gated(asyncio.Event())
        calls.gate.set()
        runner = WorkflowRunner(store, calls, artifact_store=artifacts, owner="me:2:m")
        with pytest.raises(RunConflict, match="driven by another owner, other-host:1:abc"):
            run_async(runner.resume(run.id))
        assert (store.get_run(run.id).owner, calls.log) == ("other-host:1:abc", [])

        async def forced() -> Any:
            await runner.resume(run.id, force=True)
            return await runner.wait(run.id)

        record = run_async(forced())
        assert (record.state, record.owner, calls.log) == (
            RunState.SUCCEEDED, "me:2:m", ["train", "deploy"])


def test_a_driver_whose_run_was_taken_over_stops_at_its_next_write(
        tmp_path: Path, artifacts: ArtifactStore) -> None:
    db = tmp_path / "runs.db"

    async def main(first_store: Store, second_store: Store) -> Any:
        gate = asyncio.Event()
        first_calls, second_calls = Gated(gate), Gated(gate)
        first = WorkflowRunner(first_store, first_calls, artifact_store=artifacts,
                               owner="host-a:1:a")
        second = WorkflowRunner(second_store, second_calls, artifact_store=artifacts,
                                owner="host-b:2:b")
        run_id = await first.start(SPEC)
        await asyncio.wait_for(first_calls.started.wait(), DEADLINE)
        await second.resume(run_id, force=True)  # host-a is "gone", says the operator
        await asyncio.wait_for(second_calls.started.wait(), DEADLINE)
        gate.set()  # both trains finish; only the owner's result may be written
        await first.wait(run_id)
        return first_calls.log, second_calls.log, await second.wait(run_id)

    with open_store(str(db)) as a, open_store(str(db)) as b:
        first_log, second_log, record = run_async(main(a, b))
        steps = b.step_states(record.id)
    assert first_log == ["train"]  # fenced out: its train result refused, deploy never run
    assert second_log == ["train", "deploy"]
    assert (record.state, record.owner) == (RunState.SUCCEEDED, "host-b:2:b")
    assert (steps["train"].attempt, steps["deploy"].attempt) == (2, 1)


def test_a_cancel_from_another_process_is_not_overwritten(tmp_path: Path,
                                                          artifacts: ArtifactStore) -> None:
    db = tmp_path / "runs.db"

    async def main(driver_store: Store, other_store: Store) -> Any:
        gate = asyncio.Event()
        calls = Gated(gate)
        driver = WorkflowRunner(driver_store, calls, artifact_store=artifacts)
        run_id = await driver.start(SPEC)
        await asyncio.wait_for(calls.started.wait(), DEADLINE)
        canceller = WorkflowRunner(other_store, calls, artifact_store=artifacts)
        said = await canceller.cancel(run_id)  # another process: `agp workflow cancel`
        gate.set()  # train now finishes, before the driver has heard of the cancel
        return said, await driver.wait(run_id), calls.log

    with open_store(str(db)) as a, open_store(str(db)) as b:
        said, record, log = run_async(main(a, b))
        steps = {n: s.state for n, s in b.step_states(record.id).items()}
    assert said.state is RunState.CANCELLED
    assert (record.state, record.error) == (RunState.CANCELLED, "cancelled")
    assert log == ["train"]  # the driver noticed at its next write: deploy never launched
    assert steps == {"train": StepState.CANCELLED, "deploy": StepState.CANCELLED}


def _spawn(work: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (work / "worker.out").open("ab") as out, (work / "worker.err").open("ab") as err:
        return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=REPO, env=env,
                                stdout=out, stderr=err)


def test_two_processes_resuming_one_run_only_one_drives_it(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "runs.db")) as store:
        run = store.create_run(load_spec(WORKER_SPEC), owner=None)  # left to be resumed
    log = tmp_path / "steps.log"
    procs = [_spawn(tmp_path, "resume", str(tmp_path), run.id) for _ in range(2)]
    try:
        deadline = time.monotonic() + DEADLINE
        while True:  # one process must give up, the other must be in train, waiting
            lines = log.read_text().splitlines() if log.exists() else []
            names = [line.split()[0] for line in lines]
            assert len(names) == len(set(names)), f"a step ran twice: {lines}"
            codes = [p.poll() for p in procs]
            if 3 in codes and "train 1" in lines:
                break
            assert all(c in (None, 3) for c in codes), (tmp_path / "worker.err").read_text()
            assert time.monotonic() < deadline, f"no single driver: {codes} {lines}"
            time.sleep(0.02)
        (tmp_path / "marker").touch()
        assert sorted(p.wait(timeout=DEADLINE) for p in procs) == [0, 3]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=DEADLINE)
    results = [json.loads(line) for line in (tmp_path / "worker.out").read_text().splitlines()]
    conflicts = [r["conflict"] for r in results if "conflict" in r]
    assert len(conflicts) == 1, results
    assert "driven by another owner" in conflicts[0]
    assert [r["state"] for r in results if "state" in r] == ["succeeded"]
    assert log.read_text().splitlines() == ["collect 1", "train 1", "deploy 1"]
    with open_store(str(tmp_path / "runs.db")) as store:
        assert store.get_run(run.id).state is RunState.SUCCEEDED



def test_a_cancel_does_not_overwrite_a_step_that_finished_meanwhile(tmp_path: Path,
                                                                   artifacts: ArtifactStore
                                                                   ) -> None:
    db = tmp_path / "runs.db"
    with SqliteStore(db) as driver_store:
        run = driver_store.create_run(load_spec(SPEC), owner="driver:1:d")

        def train_succeeds() -> None:  # the driver's write, between the cancel's read and write
            driver_store.apply(run.id, steps={"train": {"state": StepState.SUCCEEDED}},
                               expect={"state": RunState.RUNNING, "owner": "driver:1:d"})

        with RaceAfterRead(db, train_succeeds) as other:
            canceller = WorkflowRunner(other, Gated(asyncio.Event()), artifact_store=artifacts)
            record = run_async(canceller.cancel(run.id))
        steps = {n: s.state for n, s in driver_store.step_states(run.id).items()}
    assert record.state is RunState.CANCELLED
    assert steps == {"train": StepState.SUCCEEDED, "deploy": StepState.CANCELLED}
