"""Parallel branches that fail together: every step that ran and failed is recorded failed,
with its own error, not just the first one the scheduler looked at."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh.errors import NoSuchAction
from mesh.workflow import (
    ArtifactStore,
    Event,
    EventKind,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
)

from ._helpers import DEADLINE, run_async

SPEC = {"name": "fan", "steps": {
    "root": {"agent": "x"},
    "left": {"agent": "x", "depends_on": ["root"]},
    "right": {"agent": "x", "depends_on": ["root"]},
    "join": {"agent": "x", "depends_on": ["left", "right"]},
}}


def test_siblings_failing_in_the_same_round_are_all_recorded_failed(
        store: Store, artifacts: ArtifactStore) -> None:
    """Both branches fail at once (their agent does not serve the action): the store and the
    events say both failed, each with its error; neither is shown as skipped."""
    events: list[Event] = []
    arrived: set[str] = set()
    both = asyncio.Event()

    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        if step.name == "root":
            return StepResult(1, "x/1")
        arrived.add(step.name)
        if arrived >= {"left", "right"}:
            both.set()
        await asyncio.wait_for(both.wait(), DEADLINE)  # both in flight, then both fail
        raise NoSuchAction(f"x has no action {step.name!r}",
                           details={"instance": f"x/{step.name}"})

    async def main() -> Any:
        runner = WorkflowRunner(store, call_step, artifact_store=artifacts,
                                on_event=events.append)
        return await runner.run(SPEC)

    record = run_async(main())
    steps = store.step_states(record.id)
    assert record.state is RunState.FAILED
    for name in ("left", "right"):
        assert steps[name].state is StepState.FAILED, (name, steps[name])
        assert steps[name].error == f"NO_SUCH_ACTION: x has no action {name!r}"
        assert (steps[name].attempt, steps[name].failures) == (1, 1)
        assert steps[name].avoid == (f"x/{name}",)
        assert steps[name].finished is not None
    assert steps["join"].state is StepState.SKIPPED
    failed = sorted(e.step or "" for e in events if e.kind is EventKind.STEP_FAILED)
    assert failed == ["left", "right"]
    assert not [e for e in events if e.kind is EventKind.STEP_SKIPPED and e.step != "join"]
