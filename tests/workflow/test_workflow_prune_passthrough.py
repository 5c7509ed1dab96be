"""Artifacts a step passes through (a dependency's reference, or one into another run's
output) are recorded in that step's ``output_refs`` like the ones it creates, so ``agp
workflow prune`` never deletes a blob a kept run still points at; a reference to a blob
that is not there (or a malformed one) fails the step instead of being stored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mesh.workflow import (
    ArtifactRef,
    ArtifactStore,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    WorkflowRunner,
    decode_output,
    open_store,
)

from ._helpers import run_async
from .test_workflow_prune import DAY, _age_blobs, _backdate, _blob, _prune, _refs

DATA = b"w" * 4096  # over the 1 KiB threshold used here: spills to an artifact


def _run(url: str, artifacts: ArtifactStore, steps: dict[str, Any], *,
         resolve_inputs: bool = True) -> str:
    """A real run of ``steps`` (name -> fn(inputs) -> output), each after the one before."""

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        return StepResult(steps[step.name](inputs), "worker/1")

    names = list(steps)
    spec = {"name": "train", "steps": {s: {"agent": "worker", "depends_on": names[:i][-1:]}
                                       for i, s in enumerate(names)}}
    with open_store(url) as store:
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts,
                                inline_threshold=1024, resolve_inputs=resolve_inputs)
        return run_async(runner.run(spec)).id


def _ref_of(url: str, artifacts: ArtifactStore, run_id: str, step: str) -> ArtifactRef:
    """What a later run gets when it looks up an earlier run's output lazily."""
    with open_store(url) as store:
        blob = store.load_output(run_id, step)
    assert blob is not None
    ref = decode_output(blob, artifacts, resolve=False)["data"]
    assert isinstance(ref, ArtifactRef)
    return ref


def test_prune_keeps_a_blob_a_kept_run_passes_through(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "artifacts"
    artifacts = ArtifactStore(root)
    old = _run(url, artifacts, {"fit": lambda _: {"data": DATA}})
    ref = _ref_of(url, artifacts, old, "fit")
    _backdate(url, [old], 10 * DAY)
    _age_blobs(root, 10 * DAY)
    # the kept run reuses the old model (deep in its output), and a dependent passes it on
    new = _run(url, artifacts, {"reuse": lambda _: {"models": [{"best": ref}]},
                                "ship": lambda inputs: {"shipped": inputs["reuse"]}})
    _age_blobs(root, 10 * DAY)  # only the references keep it now

    code, out = _prune(capsys, "--older-than", "7d", "--store", url, "--artifacts", str(root))

    assert code == 0
    assert "removed 1 run(s) and 0 artifact(s)" in out
    assert _blob(root, ref.uri).is_file()
    with open_store(url) as store:
        assert [r.id for r in store.list_runs()] == [new]
        assert {n: s.output_refs for n, s in store.step_states(new).items()} == {
            "reuse": (ref.uri,), "ship": (ref.uri,)}
        blob = store.load_output(new, "ship")
    assert blob is not None
    shipped = decode_output(blob, artifacts)["shipped"]["models"][0]["best"]
    assert shipped == ref
    assert artifacts.read(shipped, verify=True) == DATA


def test_a_dependency_reference_passed_through_is_recorded(tmp_path: Path) -> None:
    """With ``resolve_inputs=False`` a dependent gets the reference and may return it."""
    url, artifacts = f"sqlite:///{tmp_path / 'runs.db'}", ArtifactStore(tmp_path / "a")
    run_id = _run(url, artifacts, {"fit": lambda _: {"data": DATA},
                                   "pick": lambda inputs: [[inputs["fit"]["data"]]] * 3},
                  resolve_inputs=False)
    with open_store(url) as store:
        steps = store.step_states(run_id)
    assert steps["fit"].output_refs == steps["pick"].output_refs
    assert len(steps["pick"].output_refs) == 1  # once, however often it appears


def test_a_prune_racing_the_commit_of_a_passed_through_reference_keeps_the_blob(
        tmp_path: Path) -> None:
    """The prune read the kept runs' references before the new run committed its own: the
    blob survives because passing it through marks it used, as storing equal content does."""
    url, root = f"sqlite:///{tmp_path / 'runs.db'}", tmp_path / "artifacts"
    artifacts = ArtifactStore(root)
    old = _run(url, artifacts, {"fit": lambda _: {"data": DATA}})
    ref = _ref_of(url, artifacts, old, "fit")
    _backdate(url, [old], 10 * DAY)
    _age_blobs(root, 10 * DAY)
    cutoff = time.time() - 7 * DAY
    with open_store(url) as store:
        pruned = store.prune_runs(finished_before=cutoff)
        kept = store.artifact_refs()
    assert pruned.refs - kept == {ref.uri}

    new = _run(url, artifacts, {"reuse": lambda _: {"model": ref}})

    assert artifacts.discard(ref.uri, untouched_since=cutoff) is None
    assert artifacts.read(ref, verify=True) == DATA
    with open_store(url) as store:
        assert _refs(store, new) == {ref.uri}


@pytest.mark.parametrize(("bad", "said"), [
    (ArtifactRef("artifact://sha256/" + "0" * 64, "0" * 64, 10), "missing"),
    (ArtifactRef("artifact://sha256/../../etc/passwd", "../../etc/passwd", 10), "malformed"),
])
def test_a_reference_to_no_stored_blob_fails_the_step(tmp_path: Path, bad: ArtifactRef,
                                                      said: str) -> None:
    url, artifacts = f"sqlite:///{tmp_path / 'runs.db'}", ArtifactStore(tmp_path / "a")
    run_id = _run(url, artifacts, {"fit": lambda _: {"model": [bad]}})
    with open_store(url) as store:
        run = store.get_run(run_id)
        step = store.step_states(run_id)["fit"]
        assert store.load_output(run_id, "fit") is None
    assert run.state is RunState.FAILED
    assert step.state is StepState.FAILED
    assert step.output_refs == ()
    assert said in (step.error or "")


def test_a_passed_through_reference_with_the_wrong_size_fails_the_step(
        tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path / 'runs.db'}", ArtifactStore(tmp_path / "a")
    real = artifacts.put(DATA)
    forged = ArtifactRef(real.uri, real.sha256, real.size + 1)
    run_id = _run(url, artifacts, {"fit": lambda _: forged})
    with open_store(url) as store:
        step = store.step_states(run_id)["fit"]
    assert step.state is StepState.FAILED
    assert "size" in (step.error or "")
