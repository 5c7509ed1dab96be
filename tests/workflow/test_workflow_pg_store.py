"""The PostgreSQL store under the runner, against a real server started by a fixture."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesh.errors import Unavailable
from mesh.workflow import (
    ArtifactStore,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
    open_store,
)

from ._helpers import run_async

SPEC = {"collect": {"agent": "data_analyst"},
        "train": {"agent": "ml_trainer", "depends_on": ["collect"]}}


@contextmanager
def fresh_schema(pg_dsn: str) -> Iterator[str]:
    """A DSN whose connections live in a new, empty schema (dropped afterwards)."""
    schema = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg_dsn}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_runner_on_postgres_then_resume_through_another_store(pg_dsn: str,
                                                              tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    calls: list[str] = []
    broken = True

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        calls.append(step.name)
        if step.name == "train" and broken:
            raise RuntimeError("trainer crashed")
        return StepResult({"from": step.name, "inputs": sorted(inputs)}, f"{step.agent}/1")

    async def resume(store: Store, run_id: str) -> Any:
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts)
        await runner.resume(run_id)
        return await runner.wait(run_id), runner.outputs(run_id)

    with fresh_schema(pg_dsn) as dsn:
        with open_store(dsn) as first_store:
            first = run_async(WorkflowRunner(first_store, call_step,
                                             artifact_store=artifacts).run(SPEC))
        assert first.state is RunState.FAILED
        assert first.error == "step 'train' failed: RuntimeError: trainer crashed"
        broken = False
        with open_store(dsn) as second_store:
            (listed,) = second_store.list_runs()
            assert listed.id == first.id
            assert second_store.step_states(first.id)["collect"].state is StepState.SUCCEEDED
            record, outputs = run_async(resume(second_store, first.id))
    assert record.state is RunState.SUCCEEDED
    assert outputs["train"] == {"from": "train", "inputs": ["collect"]}
    assert calls == ["collect", "train", "train"]


def test_two_stores_create_the_schema_concurrently(pg_dsn: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []
    with fresh_schema(pg_dsn) as dsn:

        def opener() -> None:
            try:
                stores.append(open_store(dsn))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=opener) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        try:
            assert errors == []
            assert len(stores) == 4
            assert all(s.list_runs() == [] for s in stores)
        finally:
            for s in stores:
                s.close()


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Unavailable, match="cannot connect to PostgreSQL"):
        open_store(f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2")
