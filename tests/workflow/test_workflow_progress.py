"""The terminal progress view: plain lines off a TTY, an in-place table on one."""

from __future__ import annotations

import io
import random
from typing import Any

from mesh.workflow import (
    ArtifactStore,
    ProgressDisplay,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
    render_table,
)
from mesh.workflow.progress import Row, format_duration

from ._helpers import run_async

SPEC = {"collect": {"agent": "data_analyst"},
        "train": {"agent": "ml_trainer", "depends_on": ["collect"], "retries": 1,
                  "backoff": 0.01}}


async def flaky_train(step: StepSpec, inputs: dict[str, Any], attempt: int,
                      avoid: set[str]) -> StepResult:
    if step.name == "train" and attempt == 1:
        raise ConnectionError("peer vanished")
    return StepResult({"ok": step.name}, f"{step.agent}/1")


def run_with(display: ProgressDisplay, store: Store, artifacts: ArtifactStore) -> str:
    runner = WorkflowRunner(store, flaky_train, artifact_store=artifacts, on_event=display,
                            rng=random.Random(3))
    record = run_async(runner.run(SPEC))
    return record.id


def test_plain_lines_when_not_a_tty(store: Store, artifacts: ArtifactStore) -> None:
    out = io.StringIO()
    run_id = run_with(ProgressDisplay(out, tty=False, ascii_only=False), store, artifacts)
    lines = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]  # drop the clock
    assert lines[0] == f"run {run_id} started (2 steps)"
    assert lines[1] == "▶ collect  running  try 1"
    assert lines[2].startswith("✓ collect  succeeded  try 1  ")
    assert lines[2].endswith("on data_analyst/1")
    assert lines[4].startswith("· train  retrying  try 1  ")
    assert "ConnectionError: peer vanished" in lines[4]
    assert lines[-1] == f"run {run_id} succeeded"
    assert "\x1b[" not in out.getvalue()


def test_tty_redraws_the_table_in_place(store: Store, artifacts: ArtifactStore) -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True, ascii_only=True)
    run_with(display, store, artifacts)
    text = out.getvalue()
    assert "\x1b[3F\x1b[J" in text  # header + 2 rows redrawn
    last = text.rsplit("\x1b[J", 1)[1].splitlines()
    assert last[0].split() == ["STEP", "STATE", "TRY", "TIME", "NOTE"]
    assert last[1].startswith("+ collect  succeeded")
    assert last[2].startswith("+ train    succeeded    2")


def test_status_table_from_the_store(store: Store, artifacts: ArtifactStore) -> None:
    run_id = run_with(ProgressDisplay(io.StringIO(), tty=False), store, artifacts)
    out = io.StringIO()
    ProgressDisplay(out, tty=False, ascii_only=True).show(store.step_states(run_id))
    rows = out.getvalue().splitlines()
    assert len(rows) == 3
    assert rows[2].startswith("+ train    succeeded    2")


def test_render_table_columns_and_glyphs() -> None:
    rows = [Row("a", StepState.SUCCEEDED, 1, 100.0, 101.5, "on x/1"),
            Row("long_step", StepState.RUNNING, 2, 100.0, None, ""),
            Row("c", StepState.FAILED, 3, 100.0, 190.0, "boom " * 40),
            Row("d", StepState.SKIPPED)]
    text = render_table(rows, now=112.0)
    lines = text.splitlines()
    assert lines[1] == "✓ a          succeeded    1    1.50s  on x/1"
    assert lines[2] == "▶ long_step  running      2    12.0s"
    assert lines[3].startswith("✗ c          failed       3    1m30s  boom boom")
    assert lines[3].endswith("...")
    assert lines[4] == "↷ d          skipped"


def test_ascii_fallback_for_narrow_encodings() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert ProgressDisplay(stream, tty=False).ascii_only


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 0.421, 12.34, 125, 3720)] == [
        "", "0.42s", "12.3s", "2m05s", "1h02m"]
