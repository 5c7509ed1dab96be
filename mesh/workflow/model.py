"""The workflow data model: specs, states and the spec error, shared by every other module.

Kept apart from parsing and validation so that the store, the runner and the progress display
can depend on plain frozen dataclasses without pulling in file readers or the checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mesh.errors import ConfigError, Error, ErrorCode


class WorkflowSpecError(ConfigError):
    """A workflow or pipeline spec is invalid; ``problems`` lists every problem found.

    All problems are collected before raising, so one edit-and-retry fixes the whole file.
    """

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems: list[str] = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        head = f"invalid workflow spec{where}: {len(self.problems)} problem(s)"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems))


class RunNotFound(Error, LookupError):
    """No run with that id (or id prefix) exists in the store."""


class RunConflict(Error):
    """The run is not in the state (or not with the owner) a guarded write expected: another
    process took it over, cancelled it or finished it first. Nothing was written.

    ``state`` and ``owner`` are what the store holds now. Sent as FORBIDDEN: the caller may
    not drive (or finish) this run, and asking again will not change that.
    """

    code = ErrorCode.FORBIDDEN

    def __init__(self, message: str, *, state: RunState | None = None,
                 owner: str | None = None) -> None:
        super().__init__(message)
        self.state, self.owner = state, owner


class LeaseHeld(RunConflict):
    """A resume refused: the run's owner is on another host and its lease has not expired
    (``lease_until``, epoch seconds; a takeover is allowed after ``takeover_at``, which adds
    a grace for clock skew). Its liveness cannot be seen from here; the lease can."""

    def __init__(self, message: str, *, state: RunState | None = None,
                 owner: str | None = None, lease_until: float | None = None,
                 takeover_at: float | None = None) -> None:
        super().__init__(message, state=state, owner=owner)
        self.lease_until, self.takeover_at = lease_until, takeover_at


class LeaseLost(RunConflict):
    """This process stopped driving a run because its lease expired: it could not renew it
    in time, or another process took the run over after it expired (``owner``, if known).
    Steps in flight here were cancelled and nothing more is written from here."""

    def __init__(self, message: str, *, state: RunState | None = None,
                 owner: str | None = None, lease_until: float | None = None) -> None:
        super().__init__(message, state=state, owner=owner)
        self.lease_until = lease_until


class RunState(str, Enum):
    """Life cycle of a run; the three last ones are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class StepState(str, Enum):
    """Life cycle of one step; ``skipped`` means it never ran because the run ended first."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self not in (StepState.PENDING, StepState.RUNNING)


@dataclass(frozen=True)
class StepSpec:
    """One step of a DAG workflow, as the runner and the injected ``call_step`` see it.

    ``agent`` is a service name (``data_analyst`` or ``acme/ml/data_analyst``); ``action``
    defaults to the step name; ``timeout`` (seconds) bounds one attempt; ``retries`` counts
    extra attempts after a failure, spaced by ``backoff * 2**n`` seconds with jitter.
    """

    name: str
    agent: str
    action: str
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    retries: int = 0
    backoff: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The step in the spec-file shape (round-trips through ``validate``)."""
        out: dict[str, Any] = {"agent": self.agent}
        if self.action != self.name:
            out["action"] = self.action
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.retries:
            out["retries"] = self.retries
        if self.backoff != 1.0:
            out["backoff"] = self.backoff
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated DAG of steps; ``steps`` keeps the file's order, ``order`` is topological."""

    name: str
    steps: Mapping[str, StepSpec]
    order: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The wrapper shape ``{"name": ..., "steps": {...}}``, JSON- and TOML-friendly."""
        return {"name": self.name, "steps": {n: s.to_dict() for n, s in self.steps.items()}}

    def dependents(self, name: str) -> tuple[str, ...]:
        """Steps that list ``name`` in their ``depends_on``."""
        return tuple(s.name for s in self.steps.values() if name in s.depends_on)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a streaming pipeline.

    A stage has a ``source`` (it produces ticks at ``rate`` per second) or an ``agent``
    (it processes what the previous stage emits, by ``pattern``). Any other key of the
    stage (``model``, ``threshold``...) is kept in ``params`` for the agent.
    """

    name: str
    agent: str | None = None
    source: str | None = None
    pattern: str = "request"
    rate: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSpec:
    """A streaming pipeline: stages in order, each feeding the next."""

    name: str
    stages: tuple[StageSpec, ...]
