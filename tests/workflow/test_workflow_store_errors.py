"""Store failures are typed mesh errors and change nothing, and the orchestrator's cancel
watcher outlives them: a SQLite database locked by another connection, with a short busy
timeout, is the failure fed in."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agents.orchestrator import watch_cancels
from mesh.errors import ConfigError, Unavailable
from mesh.workflow import (
    ArtifactStore,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    WorkflowRunner,
    load_spec,
    open_store,
)
from mesh.workflow.sqlite_store import SqliteStore

from ._helpers import DEADLINE, run_async, until

SPEC = load_spec({"name": "locked", "steps": {"a": {"agent": "x"}}})


@contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock until the block ends."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


class LockedReads(SqliteStore):
    """A real SQLite store whose reads take the write lock too, so another connection's
    lock fails them as well (in WAL mode a reader is never blocked otherwise): the cancel
    watcher only reads."""

    reads = 0

    def _tx(self, *, write: bool = True) -> Any:
        self.reads += not write
        return super()._tx(write=True)


def test_a_locked_database_is_unavailable_and_nothing_changes(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with SqliteStore(db, busy_timeout=0.05) as store:
        run = store.create_run(SPEC)
        with locked(db):
            with pytest.raises(Unavailable, match="database is locked"):
                store.apply(run.id, run={"state": RunState.FAILED},
                            steps={"a": {"state": StepState.FAILED}})
            with pytest.raises(Unavailable, match="database is locked"):
                store.create_run(SPEC, run_id="second")
        assert store.get_run(run.id).state is RunState.RUNNING
        assert store.step_states(run.id)["a"].state is StepState.PENDING
        assert [r.id for r in store.list_runs()] == [run.id]
        with pytest.raises(ConfigError, match="refused the change"):
            store.create_run(SPEC, run_id=run.id)  # a duplicate id
        store.apply(run.id, run={"state": RunState.FAILED})  # the store goes on
        assert store.get_run(run.id).state is RunState.FAILED


def test_the_cancel_watcher_outlives_store_errors(tmp_path: Path, artifacts: ArtifactStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "runs.db"
    caplog.set_level(logging.WARNING, logger="agp.orchestrator")

    def warned() -> bool:
        return any("cancel watch: the store failed" in r.getMessage() for r in caplog.records)

    async def main(store: LockedReads) -> Any:
        started, stopped = asyncio.Event(), asyncio.Event()

        async def hang(step: StepSpec, inputs: dict[str, Any], attempt: int,
                       avoid: set[str]) -> StepResult:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()
            raise AssertionError("unreachable")

        runner = WorkflowRunner(store, hang, artifact_store=artifacts)
        run_id = await runner.start(SPEC)
        await asyncio.wait_for(started.wait(), DEADLINE)
        watcher = asyncio.ensure_future(watch_cancels(store, runner, poll=0.01, max_pause=0.05))
        try:
            with locked(db):
                await until(lambda: watcher.done() or warned(), what="a failed poll")
                after = store.reads
                await until(lambda: watcher.done() or store.reads >= after + 2,
                            what="more polls after the failure")
                assert not watcher.done(), watcher.exception()
            with open_store(str(db)) as other:  # `agp workflow cancel`, another process
                await WorkflowRunner(other, hang, artifact_store=artifacts).cancel(run_id)
            await asyncio.wait_for(stopped.wait(), DEADLINE)  # the watcher stopped the step
            record = await runner.wait(run_id)
            assert not watcher.done()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        return record

    store = LockedReads(db, busy_timeout=0.05)
    try:
        record = run_async(main(store))
    finally:
        store.close()
    assert record.state is RunState.CANCELLED
    assert warned()
