"""``agp workflow prune``: finished runs past an age go, with their steps and the artifacts
no kept run points at; running (resumable) runs, runs whose lease is held, each workflow's
``--keep`` newest and shared blobs stay. Same on SQLite and PostgreSQL; a dry run changes
nothing; bad input is exit 2 and touches nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.workflow_cli import main
from mesh.workflow import (
    ArtifactStore,
    RunNotFound,
    RunState,
    StepResult,
    StepSpec,
    Store,
    WorkflowRunner,
    open_store,
    validate,
)
from mesh.workflow.sqlite_store import SqliteStore

from ._helpers import run_async

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0


def _run(url: str, artifacts: ArtifactStore, name: str, outputs: dict[str, bytes], *,
         fail: str | None = None) -> str:
    """A real run of steps one after another; outputs of 1 KiB or more spill to
    ``artifacts``."""

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        if step.name == fail:
            raise RuntimeError("boom")
        return StepResult({"data": outputs[step.name]}, "worker/1")

    names = list(outputs)  # a chain: a failed step leaves no sibling half done
    spec = {"name": name, "steps": {s: {"agent": "worker", "depends_on": names[:i][-1:]}
                                    for i, s in enumerate(names)}}
    with open_store(url) as store:
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts, inline_threshold=1024)
        return run_async(runner.run(spec)).id


def _backdate(url: str, run_ids: list[str], seconds: float) -> None:
    """Make runs look ``seconds`` older, as if they had ended then (the store itself always
    stamps the present)."""
    sql = "UPDATE runs SET created = created - {0}, updated = updated - {0} WHERE id = {0}"
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.executemany(sql.format("?"), [(seconds, seconds, r) for r in run_ids])
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        for run_id in run_ids:
            pg.execute(sql.format("%s"), (seconds, seconds, run_id))


def _age_blobs(root: Path, seconds: float) -> None:
    then = time.time() - seconds
    for blob in root.glob("??/*"):
        os.utime(blob, (then, then))


def _blob(root: Path, uri: str) -> Path:
    sha = uri.rsplit("/", 1)[1]
    return root / sha[:2] / sha


def _refs(store: Store, run_id: str) -> set[str]:
    return {u for s in store.step_states(run_id).values() for u in s.output_refs}


def _exists(store: Store, run_id: str) -> bool:
    try:
        store.get_run(run_id)
    except RunNotFound:
        return False
    return True


def _prune(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["prune", *args])
    return code, capsys.readouterr().out


def _fleet(url: str, root: Path) -> dict[str, str]:
    """Old runs that ended (succeeded, failed, cancelled), an old one left running, an old
    cancelled one whose driver on another host still holds its lease, and a recent one
    sharing a blob with an old one."""
    artifacts = ArtifactStore(root)
    shared, alone = b"s" * 4096, b"a" * 4096
    runs = {
        "old_ok": _run(url, artifacts, "train", {"fit": alone, "eval": shared}),
        "old_failed": _run(url, artifacts, "train", {"fit": b"f" * 4096, "eval": b"x"},
                           fail="eval"),
    }
    spec = validate({"name": "train", "steps": {"fit": {"agent": "worker"}}})
    with open_store(url) as store:
        runs["old_running"] = store.create_run(spec).id  # a dead driver's: resumable
        runs["old_cancelled"] = store.create_run(spec).id
        runs["old_leased"] = store.create_run(spec, owner="elsewhere:4242:ab",
                                              lease_until=time.time() + 3600).id
        runner = WorkflowRunner(store, _never, artifact_store=artifacts)
        for key in ("old_cancelled", "old_leased"):
            assert run_async(runner.cancel(runs[key])).state is RunState.CANCELLED
    _backdate(url, list(runs.values()), 10 * DAY)
    runs["new_ok"] = _run(url, artifacts, "train", {"fit": shared, "eval": b"n" * 10})
    _age_blobs(root, 10 * DAY)  # only references keep the shared blob now
    return runs


async def _never(*_args: Any) -> StepResult:
    raise AssertionError("no step runs here")


def test_prune_removes_old_finished_runs_and_the_blobs_only_they_used(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    runs = _fleet(store_url, root)
    with open_store(store_url) as store:
        refs = {key: _refs(store, run_id) for key, run_id in runs.items()}
    (shared,) = refs["old_ok"] & refs["new_ok"]
    only_old = (refs["old_ok"] | refs["old_failed"]) - {shared}
    assert len(only_old) == 2
    assert all(_blob(root, u).is_file() for u in only_old)

    code, out = _prune(capsys, "--older-than", "7d", "--store", store_url,
                       "--artifacts", str(root))

    assert code == 0
    gone = {"old_ok", "old_failed", "old_cancelled"}
    with open_store(store_url) as store:
        assert {k for k, r in runs.items() if not _exists(store, r)} == gone
        assert store.artifact_refs() == refs["new_ok"]  # no step rows of a pruned run left
        assert store.get_run(runs["old_running"]).state is RunState.RUNNING
    for key in gone:
        assert f"removed run {runs[key]}" in out
    assert "removed 3 run(s) and 2 artifact(s), 8192 bytes" in out
    assert not any(_blob(root, u).exists() for u in only_old)
    assert _blob(root, shared).is_file()  # the kept run still points at it


def test_a_dry_run_lists_the_same_and_changes_nothing(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    runs = _fleet(store_url, root)
    files = {p: p.stat().st_mtime for p in root.rglob("*")}

    code, out = _prune(capsys, "--older-than", "7d", "--dry-run", "--store", store_url,
                       "--artifacts", str(root))

    assert code == 0
    assert "would remove 3 run(s) and 2 artifact(s), 8192 bytes" in out
    assert f"would remove run {runs['old_ok']}" in out
    assert {p: p.stat().st_mtime for p in root.rglob("*")} == files
    with open_store(store_url) as store:
        assert all(_exists(store, r) for r in runs.values())
        assert len(store.list_runs()) == len(runs)


def test_keep_spares_each_workflows_newest_finished_runs_and_their_blobs(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    artifacts = ArtifactStore(root)
    shared = b"s" * 2048
    made = {name: [_run(store_url, artifacts, name, {"s": data}) for data in
                   (shared, name.encode() * 1024, shared)] for name in ("hourly", "weekly")}
    for name, ids in made.items():  # oldest first, a day apart, all past the age
        for n, run_id in enumerate(ids):
            _backdate(store_url, [run_id], (10 - n) * DAY)
    _age_blobs(root, 10 * DAY)

    code, out = _prune(capsys, "--older-than", "7d", "--keep", "2", "--store", store_url,
                       "--artifacts", str(root))

    assert code == 0, out
    assert "removed 2 run(s) and 0 artifact(s)" in out
    with open_store(store_url) as store:
        left = {r.id for r in store.list_runs()}
        still = store.artifact_refs()
    assert left == {*made["hourly"][1:], *made["weekly"][1:]}
    assert len(still) == 3  # shared, and each workflow's own
    assert all(_blob(root, uri).is_file() for uri in still)


def test_a_blob_put_again_since_the_cutoff_is_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run in flight stored equal content (deduplicated: no new file) and will name it
    at its next commit: the pruned run's blob must outlive the prune."""
    url, root = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "artifacts"
    artifacts = ArtifactStore(root)
    old = _run(url, artifacts, "train", {"fit": b"d" * 4096})
    _backdate(url, [old], 10 * DAY)
    _age_blobs(root, 10 * DAY)
    ref = artifacts.put(b"d" * 4096)  # the run in flight, before its commit

    code, out = _prune(capsys, "--older-than", "7d", "--store", url, "--artifacts", str(root))

    assert code == 0
    assert "removed 1 run(s) and 0 artifact(s)" in out
    assert artifacts.read(ref) == b"d" * 4096


class ResumedMidPrune(SqliteStore):
    """Another process resumes ``victim`` after the prune picked it, before it deletes."""

    victim = ""

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Any]:
        if write and self.victim:
            with open_store(f"sqlite:///{self.path}") as other:
                other.apply(self.victim, run={"state": RunState.RUNNING},
                            expect={"state": RunState.FAILED})
            self.victim = ""
        return super()._tx(write=write)


def test_a_run_resumed_while_the_prune_runs_is_not_deleted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    artifacts = ArtifactStore(tmp_path / "artifacts")
    failed = _run(url, artifacts, "train", {"fit": b"x", "eval": b"y"}, fail="eval")
    done = _run(url, artifacts, "train", {"fit": b"x"})
    _backdate(url, [failed, done], 10 * DAY)
    store = ResumedMidPrune(tmp_path / "runs.db")
    try:
        store.victim = failed
        pruned = store.prune_runs(finished_before=time.time() - 7 * DAY)
        assert [r.id for r in pruned.runs] == [done]
        assert store.get_run(failed).state is RunState.RUNNING
        assert set(store.step_states(failed)) == {"fit", "eval"}
    finally:
        store.close()


@pytest.mark.parametrize(("args", "said"), [
    (["--older-than", "7"], "invalid age value"),
    (["--older-than=-1d"], "invalid age value"),
    (["--older-than", "7d", "--keep", "-1"], "--keep"),
    (["--keep", "3"], "--older-than"),
])
def test_bad_input_is_exit_2_and_touches_nothing(tmp_path: Path, args: list[str],
                                                  said: str) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    artifacts = ArtifactStore(tmp_path / "artifacts")
    run_id = _run(url, artifacts, "train", {"fit": b"d" * 4096})
    _backdate(url, [run_id], 10 * DAY)
    out = subprocess.run([sys.executable, "-m", "agents.workflow_cli", "prune", *args,
                          "--store", url], capture_output=True, text=True, timeout=60,
                         cwd=REPO, check=False)
    assert out.returncode == 2, out.stderr
    assert said in out.stderr
    with open_store(url) as store:
        assert _exists(store, run_id)


def test_a_store_that_is_not_there_is_exit_2_and_not_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo" / "runs.db"
    assert main(["prune", "--older-than", "1d", "--store", f"sqlite:///{missing}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not missing.parent.exists()
