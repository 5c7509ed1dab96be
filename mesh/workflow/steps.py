"""What one step attempt is to the runner: the ``call_step`` contract, its result, the
retry arithmetic and the in-memory progress of a step (kept apart from the driver in
:mod:`mesh.workflow.execution` so each stays small)."""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mesh.errors import (
    ConfigError,
    Error,
    Forbidden,
    Malformed,
    NoSuchAction,
    TooLarge,
    Unauthenticated,
)
from mesh.workflow.codec import OutputError
from mesh.workflow.model import StepSpec, StepState, WorkflowSpec
from mesh.workflow.store import StepRecord

CURRENT_RUN: contextvars.ContextVar[str] = contextvars.ContextVar("agp_workflow_run")
"""The run id, readable inside ``call_step`` (e.g. for an idempotency key or a trace)."""

NON_RETRYABLE: Final = (ConfigError, NoSuchAction, Forbidden, Unauthenticated, Malformed,
                        TooLarge, OutputError)
"""Failures that another attempt cannot fix: the step fails at once, retries or not."""

STEP_TIMED_OUT: Final = "agp-workflow: the step's timeout expired"
"""The message of the CancelledError a ``call_step`` sees when the runner stops it because
the step's timeout expired (any other cancel has none): the caller's deadline passed, which
a circuit breaker counts as a failure of the destination, unlike a cancel by a person."""


def cancelled_by_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is the runner cancelling a call because its step timed out."""
    return isinstance(exc, asyncio.CancelledError) and exc.args[:1] == (STEP_TIMED_OUT,)


@dataclass(frozen=True)
class StepResult:
    """What ``call_step`` returns: the step's output and the instance that produced it."""

    output: Any = None
    instance: str | None = None


CallStep = Callable[[StepSpec, dict[str, Any], int, set[str]], Awaitable[StepResult]]
"""``call_step(step, inputs, attempt, avoid)``: run one attempt of a step somewhere.

``inputs`` maps each dependency's name to its output; ``attempt`` counts from 1; ``avoid``
holds instances that already failed this step. To add to ``avoid``, raise an exception with
an ``instance`` attribute or (for a mesh :class:`Error`) ``details["instance"]``. A plain
return value is taken as ``StepResult(value)``.
"""


def backoff_delay(base: float, failures: int, *, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the delay fixed, half random."""
    if base <= 0 or failures <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(failures - 1, 32))
    return delay / 2 + rng.uniform(0, delay / 2)


def instance_of(exc: BaseException) -> str | None:
    """The instance an exception blames, if it names one."""
    inst = getattr(exc, "instance", None)
    if inst is None and isinstance(exc, Error):
        inst = exc.details.get("instance")
    return inst if isinstance(inst, str) and inst else None


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"


@dataclass
class StepProgress:
    """The runner's in-memory view of one step (mirrors its store row)."""

    state: StepState = StepState.PENDING
    attempt: int = 0
    failures: int = 0
    avoid: set[str] = field(default_factory=set)
    started: float | None = None


class StepFailed(Exception):
    """Internal: a step failed for good; carries what to record."""

    def __init__(self, step: str, error: str, instance: str | None) -> None:
        super().__init__(error)
        self.step, self.error, self.instance = step, error, instance


def plan_resume(spec: WorkflowSpec, stored: Mapping[str, StepRecord], *, fresh: bool,
                owner: str | None) -> tuple[dict[str, StepProgress], dict[str, dict[str, Any]],
                                            StepFailed | None]:
    """What resuming a run does to its steps: (progress, store updates, the step that fails).

    Steps not succeeded go back to ``pending``. On a ``fresh`` resume (of a failed or
    cancelled run) their retry budget starts over. Otherwise the run was left ``running``
    by a process that died, and a step still ``running`` was in flight then: that attempt
    counts as a failure, or a poison step that kills its orchestrator would run again on
    every restart, forever. A step past its budget fails the run (the returned StepFailed).
    """
    progress: dict[str, StepProgress] = {}
    updates: dict[str, dict[str, Any]] = {}
    doomed: StepFailed | None = None
    for name, step in stored.items():
        p = StepProgress(state=step.state, attempt=step.attempt, failures=step.failures,
                         avoid=set(step.avoid), started=step.started)
        progress[name] = p
        if step.state is StepState.SUCCEEDED:
            continue
        cols: dict[str, Any] = {}
        if fresh:
            p.failures, p.avoid = 0, set()
        elif step.state is StepState.RUNNING:
            p.failures += 1
            cols["error"] = (f"interrupted: the process driving the run ({owner or 'unknown'})"
                             f" stopped during attempt {step.attempt}")
        if step.state is not StepState.PENDING or fresh:
            cols.update(state=StepState.PENDING, failures=p.failures, avoid=p.avoid,
                        finished=None)
            updates[name] = cols
        p.state = StepState.PENDING
        if not fresh and doomed is None and p.failures > spec.steps[name].retries:
            error = cols.get("error") or step.error or "no retries left"
            doomed = StepFailed(name, f"{error} (retries: {spec.steps[name].retries})", None)
    return progress, updates, doomed
