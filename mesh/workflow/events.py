"""Progress events a runner emits, for live displays and logs (never for control flow)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from mesh.workflow.model import RunState, StepState


class EventKind(str, Enum):
    RUN_STARTED = "run_started"
    STEP_STARTED = "step_started"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_RETRYING = "step_retrying"
    STEP_FAILED = "step_failed"
    STEP_CANCELLED = "step_cancelled"
    STEP_SKIPPED = "step_skipped"
    RUN_FINISHED = "run_finished"


@dataclass(frozen=True)
class Event:
    """What happened, when (``at``, wall clock) and how long it took (``duration``, s).

    ``steps`` (on run_started) gives every step's state, so a display started on a resumed
    run shows the steps already done; ``run_state`` is set on run_finished; ``delay`` is the
    backoff before the next attempt on step_retrying.
    """

    kind: EventKind
    run_id: str
    at: float
    step: str | None = None
    attempt: int = 0
    duration: float | None = None
    error: str | None = None
    instance: str | None = None
    delay: float | None = None
    run_state: RunState | None = None
    steps: Mapping[str, StepState] | None = None


EventHook = Callable[[Event], None]
