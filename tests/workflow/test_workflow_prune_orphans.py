"""``agp workflow prune --orphans``: blob files no run left in the store points at (a step's
output whose commit a crash lost, a run deleted by other means) go once untouched for the
age; a fresh one (a running step's, not yet recorded), one a kept, running or leased run
points at, and anything that is not a blob ``put`` wrote (temp files, other names,
directories, symlinks and what they point at) stay. A dry run reports and deletes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import Unavailable
from mesh.workflow import (
    ArtifactError,
    ArtifactStore,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    WorkflowRunner,
    open_store,
    validate,
)
from mesh.workflow.sqlite_store import SqliteStore

from ._helpers import run_async
from .test_workflow_prune import DAY, REPO, _age_blobs, _backdate, _prune, _run

OLD = 10 * DAY  # past the 7d used below


def _age(path: Path, seconds: float = OLD) -> None:
    """Backdate one file (or the link itself, not what it points at)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def _orphan(artifacts: ArtifactStore, data: bytes, *, old: bool = True) -> Path:
    """A blob no run records, as a step leaves it when its process dies before the commit."""
    path = artifacts.path(artifacts.put(data))
    if old:
        _age(path)
    return path


def _pointed_at(url: str, name: str, uri: str, **run: Any) -> str:
    """A run (``run``: its columns) whose one step points at ``uri``, ended 10 days ago."""
    spec = validate({"name": name, "steps": {"fit": {"agent": "worker"}}})
    with open_store(url) as store:
        run_id = store.create_run(spec, owner=run.pop("owner", None),
                                  lease_until=run.pop("lease_until", None)).id
        store.apply(run_id, run=run or None, steps={"fit": {
            "state": StepState.SUCCEEDED, "output_refs": [uri]}})
    _backdate(url, [run_id], OLD)
    return run_id


def _fleet(url: str, root: Path) -> dict[str, Path]:
    """An old run to prune, a kept run, a run left running and a cancelled run whose lease
    is held (each pointing at an old blob), an old orphan and a fresh one."""
    artifacts = ArtifactStore(root)
    pruned = _run(url, artifacts, "train", {"fit": b"p" * 4096})
    _backdate(url, [pruned], OLD)
    _run(url, artifacts, "train", {"fit": b"k" * 4096})  # recent: kept
    blobs = {"pruned": b"p" * 4096, "kept": b"k" * 4096}
    for key, run in (("running", {}), ("leased", {
            "state": RunState.CANCELLED, "owner": "elsewhere:4242:ab",
            "lease_until": time.time() + 3600})):
        ref = artifacts.put(key.encode() * 1000)
        _pointed_at(url, key, ref.uri, **run)
        blobs[key] = key.encode() * 1000
    _age_blobs(root, OLD)  # only references keep these now
    paths = {key: artifacts.path(artifacts.put(data)) for key, data in blobs.items()}
    _age_blobs(root, OLD)  # (the put above touched them)
    paths["orphan"] = _orphan(artifacts, b"o" * 3000)
    paths["fresh"] = _orphan(artifacts, b"f" * 2000, old=False)
    return paths


def test_an_old_orphan_goes_and_referenced_or_fresh_blobs_stay(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "artifacts"
    paths = _fleet(store_url, root)
    args = ("--older-than", "7d", "--store", store_url, "--artifacts", str(root))

    code, out = _prune(capsys, *args)  # without the flag: orphans are not looked for
    assert code == 0
    assert "removed 1 run(s) and 1 artifact(s), 4096 bytes" in out
    assert "orphan" not in out
    assert paths["orphan"].is_file()

    code, out = _prune(capsys, *args, "--orphans")

    assert code == 0, out
    uri = "artifact://sha256/" + paths["orphan"].name
    assert f"removed orphan artifact {uri} (3000 bytes)" in out
    assert "removed 0 run(s) and 0 artifact(s), 0 bytes" in out
    assert "removed 1 orphan artifact(s), 3000 bytes" in out
    assert not paths["orphan"].exists()
    assert not paths["pruned"].exists()
    for key in ("kept", "running", "leased", "fresh"):
        assert paths[key].is_file(), key
    with open_store(store_url) as store:
        states = sorted(r.state.value for r in store.list_runs())
    assert states == ["cancelled", "running", "succeeded"]


def test_a_dry_run_reports_the_same_and_deletes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "artifacts"
    paths = _fleet(url, root)
    files = {p: p.stat().st_mtime for p in root.rglob("*")}
    args = ("--older-than", "7d", "--orphans", "--store", url, "--artifacts", str(root))

    code, dry = _prune(capsys, *args, "--dry-run")

    assert code == 0
    assert {p: p.stat().st_mtime for p in root.rglob("*")} == files
    uri = "artifact://sha256/" + paths["orphan"].name
    # the pruned run's blob counts once, as its artifact, not also as an orphan
    assert "would remove 1 run(s) and 1 artifact(s), 4096 bytes" in dry
    assert f"would remove orphan artifact {uri} (3000 bytes)" in dry
    assert "would remove 1 orphan artifact(s), 3000 bytes" in dry
    with open_store(url) as store:
        assert len(store.list_runs()) == 4

    code, out = _prune(capsys, *args)

    assert code == 0
    assert out.splitlines()[-2:] == [line.replace("would remove", "removed")
                                     for line in dry.splitlines()[-2:]]
    assert not paths["orphan"].exists()
    assert not paths["pruned"].exists()


def test_only_blob_files_are_touched_never_links_or_other_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "artifacts"
    _run(url, ArtifactStore(root), "train", {"fit": b"x"})  # a store, no blob
    artifacts = ArtifactStore(root)
    outside = tmp_path / "elsewhere"
    (outside / "ef").mkdir(parents=True)
    sha = "ab" + "1" * 62
    target = outside / "target"
    target.write_bytes(b"not ours")
    decoys = [
        root / "tmp" / "put-crashed",  # a put that died before its rename
        root / "ab" / "notes.txt",
        root / "ab" / sha.upper(),
        root / "cd" / sha,  # a sha256 name in the wrong directory
        root / sha,  # ...or at the top
        outside / "ef" / ("ef" + "2" * 62),  # reachable only through the link ef/
    ]
    for path in decoys:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep me")
    (root / "ab" / ("ab" + "3" * 62)).mkdir()  # a directory with a blob's name
    link = root / "ab" / sha
    link.symlink_to(target)  # a link with a blob's name, to a file outside the root
    (root / "ef").symlink_to(outside / "ef", target_is_directory=True)
    for path in [*decoys, target, link, root / "ef"]:
        _age(path)
    orphan = _orphan(artifacts, b"o" * 100)

    code, out = _prune(capsys, "--older-than", "7d", "--orphans", "--store", url,
                       "--artifacts", str(root))

    assert code == 0
    assert "removed 1 orphan artifact(s), 100 bytes" in out
    assert not orphan.exists()
    assert all(p.read_bytes() == b"keep me" for p in decoys)
    assert link.is_symlink()
    assert target.read_bytes() == b"not ours"
    assert (root / "ef").is_symlink()
    assert (root / "ab" / ("ab" + "3" * 62)).is_dir()
    assert list(artifacts.blobs()) == []


def test_discard_refuses_a_link_in_a_blobs_place(tmp_path: Path) -> None:
    """A prune deletes what ``put`` wrote, never a link (nor what it points at)."""
    artifacts = ArtifactStore(tmp_path / "artifacts")
    target = tmp_path / "target"
    target.write_bytes(b"not ours")
    sha = "ab" + "4" * 62
    link = artifacts.root / "ab" / sha
    link.parent.mkdir()
    link.symlink_to(target)
    _age(target)
    for dry_run in (True, False):
        with pytest.raises(ArtifactError, match="not a blob file"):
            artifacts.discard("artifact://sha256/" + sha, untouched_since=time.time(),
                              dry_run=dry_run)
    assert link.is_symlink()
    assert target.read_bytes() == b"not ours"


class CrashBeforeCommit(SqliteStore):
    """The store fails after a step wrote its output blob, before it records it (as a
    process killed there leaves it; the runner records the run failed instead)."""

    def apply(self, run_id: str, *, run: Mapping[str, Any] | None = None,
              steps: Mapping[str, Mapping[str, Any]] | None = None,
              expect: Mapping[str, Any] | None = None) -> None:
        if any(s.get("output_refs") for s in (steps or {}).values()):
            raise Unavailable("killed before the commit")
        super().apply(run_id, run=run, steps=steps, expect=expect)


def test_a_step_output_a_crash_left_unrecorded_is_collected_end_to_end(
        tmp_path: Path) -> None:
    """Through ``python -m agents.workflow_cli``, as an operator (or cron) runs it."""
    db, root = tmp_path / "runs.db", tmp_path / "artifacts"
    artifacts = ArtifactStore(root)

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        return StepResult({"data": b"c" * 5000}, "worker/1")

    spec = {"name": "train", "steps": {"fit": {"agent": "worker"}}}
    with CrashBeforeCommit(db) as store:
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts,
                                inline_threshold=1024)
        assert run_async(runner.run(spec)).state is RunState.FAILED
    (lost,) = (p for p in root.glob("??/*"))
    with open_store(f"sqlite:///{db}") as store:
        (run,) = store.list_runs()
        assert not store.artifact_refs()  # no run points at it
    _age(lost)

    def prune(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agents.workflow_cli", "prune", "--older-than", "7d",
             "--orphans", *extra, "--store", f"sqlite:///{db}", "--artifacts", str(root)],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False)

    dry = prune("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 1 orphan artifact(s), 5000 bytes" in dry.stdout
    assert lost.is_file()
    done = prune()
    assert done.returncode == 0, done.stderr
    assert f"removed orphan artifact artifact://sha256/{lost.name} (5000 bytes)" in done.stdout
    assert "removed 1 orphan artifact(s), 5000 bytes" in done.stdout
    assert not lost.exists()
    with open_store(f"sqlite:///{db}") as store:
        assert store.get_run(run.id).state is RunState.FAILED  # recent: kept
    helped = subprocess.run([sys.executable, "-m", "agents.workflow_cli", "prune", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    assert "--orphans" in helped.stdout
