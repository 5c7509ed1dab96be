"""The asyncio workflow runner: start, wait, cancel and resume durable runs.

It knows nothing of sockets: one step is performed by the injected ``call_step`` (see
:data:`~mesh.workflow.execution.CallStep`), which the orchestrator wires to the mesh client
and tests wire to plain coroutines. All state goes through a :class:`Store`, so another
process can resume a run this one started and was killed in the middle of.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any, Final

from mesh.errors import ConfigError
from mesh.workflow.artifacts import ArtifactStore
from mesh.workflow.codec import INLINE_THRESHOLD, decode_output
from mesh.workflow.events import EventHook
from mesh.workflow.execution import CallStep, RunExecution, Settings
from mesh.workflow.lease import stamp
from mesh.workflow.model import LeaseHeld, RunConflict, RunState, StepState, WorkflowSpec
from mesh.workflow.owner import (
    LEASE_GRACE,
    LEASE_SECONDS,
    owner_gone,
    owner_here,
    process_owner,
    takeover_at,
)
from mesh.workflow.steps import StepFailed, StepProgress, plan_resume
from mesh.workflow.store import RunRecord, Store
from mesh.workflow.validate import validate

CANCEL_TRIES: Final = 5


class WorkflowRunner:
    """Runs DAG workflows through ``call_step``, recording every step in ``store``.

    ``max_parallel`` bounds the steps in flight across all runs of this runner;
    ``default_timeout`` (s) applies to steps that set none; ``max_backoff`` caps retry delays;
    outputs of ``inline_threshold`` bytes or more go to ``artifact_store`` by reference;
    with ``resolve_inputs=False`` dependents receive :class:`ArtifactRef` values for those
    parts instead of loading them. ``on_event`` receives :class:`Event` s (must not block).
    A run driven here holds a ``lease`` (s) in the store, renewed every third of it; a run
    another host drives is taken over once its lease plus ``lease_grace`` (clock skew) is
    past (see :mod:`mesh.workflow.owner`).
    """

    def __init__(self, store: Store, call_step: CallStep, *, artifact_store: ArtifactStore,
                 max_parallel: int = 8, on_event: EventHook | None = None,
                 default_timeout: float | None = None, max_backoff: float = 60.0,
                 inline_threshold: int = INLINE_THRESHOLD, resolve_inputs: bool = True,
                 owner: str | None = None, rng: random.Random | None = None,
                 lease: float = LEASE_SECONDS, lease_grace: float = LEASE_GRACE) -> None:
        if max_parallel < 1:
            raise ConfigError(f"max_parallel must be at least 1, got {max_parallel}")
        if default_timeout is not None and not default_timeout > 0:
            raise ConfigError(f"default_timeout must be positive, got {default_timeout}")
        if not (0 < lease < float("inf")) or not (0 <= lease_grace < float("inf")):
            raise ConfigError(f"lease must be positive and lease_grace not negative, got "
                              f"{lease} and {lease_grace}")
        self.store = store
        self.call_step = call_step
        self.owner = owner or process_owner()
        self._settings = Settings(
            artifacts=artifact_store, semaphore=asyncio.Semaphore(max_parallel),
            on_event=on_event, default_timeout=default_timeout, max_backoff=max_backoff,
            inline_threshold=inline_threshold, resolve_inputs=resolve_inputs,
            rng=rng or random.Random(), owner=self.owner, lease=lease,
        )
        self.lease_grace = lease_grace
        self._active: dict[str, RunExecution] = {}

    @property
    def active_runs(self) -> list[str]:
        """Ids of the runs this runner is driving right now."""
        return list(self._active)

    async def start(self, spec: WorkflowSpec | Mapping[str, Any], *,
                    run_id: str | None = None) -> str:
        """Validate (a dict spec), record a new run, start it; returns the run id at once."""
        if not isinstance(spec, WorkflowSpec):
            spec = validate(spec)
        until = time.time() + self._settings.lease
        record = self.store.create_run(spec, run_id=run_id, owner=self.owner, lease_until=until)
        self._launch(record.id, spec, {name: StepProgress() for name in spec.steps}, until)
        return record.id

    async def run(self, spec: WorkflowSpec | Mapping[str, Any], *,
                  timeout: float | None = None) -> RunRecord:
        """Start a run and wait for its end."""
        return await self.wait(await self.start(spec), timeout=timeout)

    async def resume(self, run_id: str, *, force: bool = False) -> str:
        """Continue a run from the store, re-running only steps not yet succeeded.

        A run left ``running`` by a dead process continues with the same retry budget, the
        attempts it had in flight counted as failures (a step out of retries fails the run);
        a ``failed`` or ``cancelled`` run gets a fresh budget for its unfinished steps. A
        ``succeeded`` run is left as it is. Returns the full run id (a prefix is accepted).
        A ``running`` run whose owner may be alive is refused unless ``force`` (use it only
        knowing that owner is gone): with :class:`RunConflict` for this process or a live
        one on this host, or one on another host that holds no lease (written before
        leases); with :class:`LeaseHeld` for one on another host whose lease (plus
        ``lease_grace``) has not run out. See :func:`~mesh.workflow.owner.owner_gone`.

        Taking the run over is one compare-and-swap in the store: it succeeds only if the
        run still has the state, owner and last update read here, so of two processes
        resuming the same run one wins and the other gets :class:`RunConflict` and drives
        nothing.
        """
        record = self.store.get_run(run_id)
        run_id = record.id
        if run_id in self._active:
            raise ConfigError(f"run {run_id} is already running in this runner")
        if record.state is RunState.SUCCEEDED:
            return run_id
        if record.state is RunState.RUNNING and not force:
            self._may_take_over(record)
        spec = validate(record.spec, source=f"run {run_id}")
        progress, updates, doomed = plan_resume(
            spec, self.store.step_states(run_id), fresh=record.state is not RunState.RUNNING,
            owner=record.owner)
        until = time.time() + self._settings.lease
        try:
            self.store.apply(run_id, run={"state": RunState.RUNNING, "error": None,
                                          "owner": self.owner, "lease_until": until},
                             steps=updates,
                             expect={"state": record.state, "owner": record.owner,
                                     "updated": record.updated,
                                     "lease_until": record.lease_until})
        except RunConflict as exc:
            raise RunConflict(f"run {run_id} is driven by another owner: it changed while "
                              f"this runner took it over ({exc.message})",
                              state=exc.state, owner=exc.owner) from None
        self._launch(run_id, spec, progress, until, doomed)
        return run_id

    def _may_take_over(self, record: RunRecord) -> None:
        """Refuse (typed, naming the owner) to take over a running run unless its owner is
        gone: dead on this host, or on another host with its lease run out."""
        if owner_gone(record.owner, record.lease_until, grace=self.lease_grace):
            return
        head = f"run {record.id} is driven by another owner, {record.owner}"
        tail = "; resume it with force only once that process is known gone"
        at = takeover_at(record.lease_until, grace=self.lease_grace)
        if owner_here(record.owner) or record.lease_until is None or at is None:
            why = ("which is alive on this host" if owner_here(record.owner) else
                   "on another host, with no lease to tell whether it is alive (started by "
                   "a build before leases)")
            raise RunConflict(f"{head}, {why}{tail}", state=record.state, owner=record.owner)
        raise LeaseHeld(
            f"{head}, on another host, whose lease runs until {stamp(record.lease_until)}: "
            f"unless renewed, it may be taken over after {stamp(at)} "
            f"({max(0.0, at - time.time()):.1f} s from now, with {self.lease_grace:g} s of "
            f"grace for clock skew){tail}", state=record.state, owner=record.owner,
            lease_until=record.lease_until, takeover_at=at)

    async def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """Wait until a run driven here ends (or is detached); returns its stored record.

        For a run this runner is not driving, returns the stored record at once.
        Raises :class:`TimeoutError` after ``timeout`` seconds (the run goes on), and
        :class:`LeaseLost` when this runner stopped driving the run because its lease ran
        out (another process may drive it now).
        """
        run_id = self.store.get_run(run_id).id
        execution = self._active.get(run_id)
        if execution is not None:
            await asyncio.wait_for(asyncio.shield(execution.task), timeout)
            if execution.lost is not None:
                raise execution.lost
        return self.store.get_run(run_id)

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run: steps in flight are cancelled, the run ends ``cancelled``.

        Also works on a run no process is driving (one left ``running`` by a crash)."""
        record = self.store.get_run(run_id)
        execution = self._active.get(record.id)
        if execution is not None:
            execution.request_stop("cancel")
            await asyncio.shield(execution.task)
        else:
            self._cancel_in_store(record)
        return self.store.get_run(record.id)

    def _cancel_in_store(self, record: RunRecord) -> None:
        """Mark a run driven elsewhere (or by no one) cancelled; its driver sees that at its
        next write and stops. Compare-and-swap on the run's last update, so a step the
        driver finishes meanwhile is not marked cancelled; the last try only requires the
        run not to have ended (a busy driver must not make the cancel fail)."""
        for tries_left in reversed(range(CANCEL_TRIES)):
            if record.state.terminal:
                return  # it ended meanwhile: the cancel came too late, the end stands
            steps = {name: {"state": StepState.CANCELLED}
                     for name, step in self.store.step_states(record.id).items()
                     if not step.state.terminal}
            expect: dict[str, Any] = {"state": record.state}
            if tries_left:
                expect["updated"] = record.updated
            try:
                self.store.apply(record.id, run={"state": RunState.CANCELLED,
                                                 "error": "cancelled"}, steps=steps,
                                 expect=expect)
                return
            except RunConflict:
                record = self.store.get_run(record.id)

    def outputs(self, run_id: str, *, resolve: bool = True) -> dict[str, Any]:
        """The decoded outputs of a run's succeeded steps (loads artifacts when ``resolve``)."""
        found: dict[str, Any] = {}
        for name, step in self.store.step_states(run_id).items():
            if step.state is StepState.SUCCEEDED:
                blob = self.store.load_output(run_id, name)
                found[name] = None if blob is None else decode_output(
                    blob, self._settings.artifacts, resolve=resolve)
        return found

    async def close(self) -> None:
        """Stop driving every run without ending it: each stays ``running`` in the store,
        with no owner and its steps in flight back to ``pending`` (not counted against their
        retries), for :meth:`resume` by this process later or by another one."""
        executions = list(self._active.values())
        for execution in executions:
            execution.request_stop("detach")
        if executions:
            await asyncio.gather(*(e.task for e in executions), return_exceptions=True)

    def _launch(self, run_id: str, spec: WorkflowSpec, progress: Mapping[str, StepProgress],
                lease_until: float, doomed: StepFailed | None = None) -> None:
        execution = RunExecution(self.store, self.call_step, self._settings, run_id, spec,
                                 progress, doomed, lease_until=lease_until)
        self._active[run_id] = execution
        execution.task.add_done_callback(lambda _t: self._active.pop(run_id, None))
