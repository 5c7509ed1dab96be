"""Drive one run: schedule ready steps, retry, time out, and record every change durably.

The rule that makes kill -9 safe: the in-memory state of a step changes only in the same
synchronous block that commits it to the store, and a step's output is committed in the same
transaction that marks it succeeded (its large parts were written to the artifact store and
fsynced before). So a restarted runner reads back exactly the steps that are done, with their
outputs, and re-runs only the others. Steps in flight at a crash are re-run if their retries
allow (the interrupted attempt counts): an agent that must not repeat work should key it on
the run id (:data:`CURRENT_RUN`) and step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh import telemetry
from mesh.errors import InternalError
from mesh.workflow.artifacts import ArtifactStore
from mesh.workflow.attempt import call_attempt, mark_failed
from mesh.workflow.codec import OutputError, decode_output, encode_output
from mesh.workflow.events import Event, EventHook, EventKind
from mesh.workflow.lease import LeaseKeeper
from mesh.workflow.model import (
    LeaseLost,
    RunConflict,
    RunState,
    StepSpec,
    StepState,
    WorkflowSpec,
)
from mesh.workflow.steps import (  # re-exported: the runner and callers import them here
    CURRENT_RUN,
    NON_RETRYABLE,
    STEP_TIMED_OUT,
    CallStep,
    StepFailed,
    StepProgress,
    StepResult,
    backoff_delay,
    describe,
    instance_of,
)
from mesh.workflow.store import Store

__all__ = ["CURRENT_RUN", "NON_RETRYABLE", "STEP_TIMED_OUT", "CallStep", "RunExecution",
           "Settings", "StepFailed", "StepProgress", "StepResult", "backoff_delay", "describe",
           "instance_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    artifacts: ArtifactStore
    semaphore: asyncio.Semaphore
    on_event: EventHook | None
    default_timeout: float | None
    max_backoff: float
    inline_threshold: int
    resolve_inputs: bool
    rng: random.Random
    owner: str
    lease: float


class RunExecution:
    """One run in this process. ``task`` completes when the run is finished or detached,
    or when this process lost it (``lost`` then says how: its lease ran out)."""

    def __init__(self, store: Store, call_step: CallStep, settings: Settings, run_id: str,
                 spec: WorkflowSpec, progress: Mapping[str, StepProgress],
                 doomed: StepFailed | None = None, *, lease_until: float) -> None:
        self.store, self.call_step, self.cfg = store, call_step, settings
        self.run_id, self.spec = run_id, spec
        self.doomed = doomed  # a step resumed past its retry budget: the run fails at once
        self.steps: dict[str, StepProgress] = dict(progress)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.outputs: dict[str, asyncio.Task[Any]] = {}
        self.stop_reason: str | None = None
        self.lost: LeaseLost | None = None
        self.lease = LeaseKeeper(store, run_id, settings.owner, lease=settings.lease,
                                 until=lease_until, on_lost=self._lease_lost)
        self._conflict: RunConflict | None = None
        self._span: Any = None  # the run's span while it runs, when tracing is on
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._drive(), name=f"workflow-run-{run_id}")

    def request_stop(self, reason: str) -> None:
        """``"cancel"`` records the run cancelled; ``"detach"`` leaves it to a later resume;
        ``"lost"`` (the lease keeper's) stops its steps and writes nothing more."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def _lease_lost(self, conflict: RunConflict | None) -> None:
        """The keeper could not renew the lease: the swap failed, or it ran out."""
        self._conflict = conflict
        self.request_stop("lost")

    async def _drive(self) -> None:
        CURRENT_RUN.set(self.run_id)
        self._emit(EventKind.RUN_STARTED, steps={n: p.state for n, p in self.steps.items()})
        stopper = asyncio.ensure_future(self._stop.wait())
        self.lease.start()
        try:
            # one run is one trace: steps are its children, agent calls their grandchildren
            with (telemetry.run_span(self.run_id, self.spec.name) if telemetry.ENABLED
                  else contextlib.nullcontext()) as self._span:
                if self.doomed is not None:
                    await self._failed(self.doomed)
                else:
                    await self._schedule(stopper)
        except RunConflict as exc:  # cancelled, ended or taken over by another process
            await self._halt()
            self._give_up(exc)
        except asyncio.CancelledError:  # the loop is going away: same as detach
            await self._halt()
            self._release()
            raise
        except Exception as exc:  # the store or the disk failed: record it if we still can
            log.exception("workflow run %s crashed", self.run_id)
            await self._halt()
            try:
                self._finish(RunState.FAILED, f"internal error: {describe(exc)}",
                             StepState.CANCELLED)
            except Exception:
                log.exception("could not record the failure of run %s", self.run_id)
        finally:
            self.lease.stop()
            stopper.cancel()
            for task in self.outputs.values():
                task.cancel()

    async def _schedule(self, stopper: asyncio.Future[Any]) -> None:
        for _ in range(len(self.spec.steps) + 2):  # each round ends at least one step
            self._launch_ready()
            if not self.tasks:
                break
            done, _ = await asyncio.wait([*self.tasks.values(), stopper],
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await self._stopped()
                return
            # every step that ended in this round: parallel branches often fail together
            # (their agent is down), and each must be recorded failed, not skipped
            failures: list[StepFailed] = []
            errors: list[BaseException] = []
            for name in [name for name, task in self.tasks.items() if task in done]:
                task = self.tasks.pop(name)
                exc = StepFailed(name, "the step was cancelled from inside", None) \
                    if task.cancelled() else task.exception()
                if isinstance(exc, StepFailed):
                    failures.append(exc)
                elif exc is not None:
                    errors.append(exc)
            if failures:
                await self._failed(*failures)
                return
            if errors:
                raise errors[0]
        else:
            raise InternalError("the scheduler did not converge")
        if any(p.state is not StepState.SUCCEEDED for p in self.steps.values()):
            raise InternalError("steps left unfinished with nothing running")
        self._finish(RunState.SUCCEEDED, None, StepState.SKIPPED)

    def _launch_ready(self) -> None:
        for name in self.spec.order:
            progress = self.steps[name]
            if progress.state is not StepState.PENDING or name in self.tasks:
                continue
            deps = self.spec.steps[name].depends_on
            if all(self.steps[d].state is StepState.SUCCEEDED for d in deps):
                self.tasks[name] = asyncio.ensure_future(self._run_step(self.spec.steps[name]))

    async def _run_step(self, step: StepSpec) -> None:
        inputs = {dep: await self._output(dep) for dep in step.depends_on}
        progress = self.steps[step.name]
        for _ in range(step.retries + 2):  # failures only grow: bounded by the retry budget
            async with self.cfg.semaphore:
                outcome = await self._attempt(step, inputs, progress)
            if isinstance(outcome, StepResult):
                await self._succeeded(step, progress, outcome)
                return
            await asyncio.sleep(outcome)
        raise InternalError(f"step {step.name!r} exceeded its retry loop")

    async def _attempt(self, step: StepSpec, inputs: dict[str, Any],
                       progress: StepProgress) -> StepResult | float:
        """One attempt; returns the result, or the delay before the next attempt."""
        progress.attempt += 1
        progress.started = time.time()
        self._apply(steps={step.name: {
            "state": StepState.RUNNING, "attempt": progress.attempt,
            "started": progress.started, "finished": None}})
        progress.state = StepState.RUNNING
        self._emit(EventKind.STEP_STARTED, step=step.name, attempt=progress.attempt)
        timeout = step.timeout if step.timeout is not None else self.cfg.default_timeout
        outcome = await call_attempt(self.call_step, self.run_id, step, inputs,
                                     progress.attempt, set(progress.avoid), timeout)
        if isinstance(outcome, StepResult):
            return outcome
        if not isinstance(outcome, Exception):
            raise outcome
        return self._attempt_failed(step, progress, outcome)

    def _attempt_failed(self, step: StepSpec, progress: StepProgress, exc: Exception) -> float:
        error, instance = describe(exc), instance_of(exc)
        if instance:
            progress.avoid.add(instance)
        progress.failures += 1
        if progress.failures > step.retries or isinstance(exc, NON_RETRYABLE):
            raise StepFailed(step.name, error, instance)
        delay = backoff_delay(step.backoff, progress.failures, cap=self.cfg.max_backoff,
                              rng=self.cfg.rng)
        now = time.time()
        self._apply(steps={step.name: {
            "state": StepState.PENDING, "failures": progress.failures, "error": error,
            "finished": now, "instance": instance, "avoid": progress.avoid}})
        progress.state = StepState.PENDING
        self._emit(EventKind.STEP_RETRYING, step=step.name, attempt=progress.attempt,
                   duration=now - (progress.started or now), error=error, instance=instance,
                   delay=delay)
        return delay

    async def _succeeded(self, step: StepSpec, progress: StepProgress, result: StepResult) -> None:
        try:
            encoded = await asyncio.to_thread(encode_output, result.output, self.cfg.artifacts,
                                              threshold=self.cfg.inline_threshold)
        except OutputError as exc:
            raise StepFailed(step.name, describe(exc), result.instance)
        now = time.time()
        self._apply(steps={step.name: {
            "state": StepState.SUCCEEDED, "finished": now, "error": None,
            "instance": result.instance, "output": encoded.blob,
            "output_refs": [r.uri for r in encoded.refs]}})
        progress.state = StepState.SUCCEEDED
        self._emit(EventKind.STEP_SUCCEEDED, step=step.name, attempt=progress.attempt,
                   duration=now - (progress.started or now), instance=result.instance)
        self._evict(step)

    async def _output(self, dep: str) -> Any:
        """A dependency's output, decoded once per run and shared by its dependents."""
        task = self.outputs.get(dep)
        if task is None:
            blob = self.store.load_output(self.run_id, dep)
            task = asyncio.ensure_future(asyncio.to_thread(
                lambda: None if blob is None else decode_output(
                    blob, self.cfg.artifacts, resolve=self.cfg.resolve_inputs)))
            self.outputs[dep] = task
        return await asyncio.shield(task)

    def _evict(self, step: StepSpec) -> None:
        """Drop a cached output once every step that needs it is done (large arrays)."""
        for dep in step.depends_on:
            if all(self.steps[d].state is StepState.SUCCEEDED for d in self.spec.dependents(dep)):
                self.outputs.pop(dep, None)

    async def _failed(self, first: StepFailed, *others: StepFailed) -> None:
        """End the run failed: ``first`` names the run's error; ``others`` failed in the
        same round and are recorded failed too, each with its own error."""
        mark_failed(self._span, first)  # the run span ends without an exception
        now = time.time()
        failed: dict[str, Mapping[str, Any]] = {}
        for failure in (first, *others):
            progress = self.steps[failure.step]
            if failure.instance:
                progress.avoid.add(failure.instance)
            failed[failure.step] = {
                "state": StepState.FAILED, "failures": progress.failures,
                "error": failure.error, "finished": now, "instance": failure.instance,
                "avoid": progress.avoid}
        self._finish(RunState.FAILED, f"step {first.step!r} failed: {first.error}",
                     StepState.SKIPPED, failed=failed)
        await self._halt()

    async def _stopped(self) -> None:
        if self.stop_reason == "lost":
            if self._conflict is not None:
                raise self._conflict  # handled as a failed write: _give_up
            await self._halt()
            self._expired()
            return
        if self.stop_reason == "cancel":
            self._finish(RunState.CANCELLED, "cancelled", StepState.CANCELLED)
        await self._halt()
        if self.stop_reason != "cancel":
            self._release()

    def _release(self) -> None:
        """Detach: give the run up (no owner) and put the steps this process stopped back
        to ``pending``, so a resume anywhere takes it at once and counts no interruption."""
        self.lease.stop()
        stopped = [n for n, p in self.steps.items() if p.state is StepState.RUNNING]
        try:
            self._apply(run={"owner": None, "lease_until": None},
                        steps={n: {"state": StepState.PENDING} for n in stopped})
        except Exception as exc:  # still ours in the store: resumable once this process ends
            log.warning("workflow run %s: cannot release it: %s", self.run_id, describe(exc))
            return
        for name in stopped:
            self.steps[name].state = StepState.PENDING

    def _finish(self, state: RunState, error: str | None, idle: StepState,
                failed: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """One transaction: the run's end state, the failed step, in-flight steps cancelled,
        steps that never started marked ``idle`` (skipped, or cancelled by a user)."""
        self.lease.stop()
        now = time.time()
        updates: dict[str, Mapping[str, Any]] = dict(failed or {})
        for name, progress in self.steps.items():
            if name in updates or progress.state.terminal:
                continue
            in_flight = name in self.tasks and not self.tasks[name].done()
            new = StepState.CANCELLED if in_flight else idle
            updates[name] = {"state": new, "finished": now if in_flight else None}
        self._apply(run={"state": state, "error": error, "lease_until": None}, steps=updates)
        for name, cols in updates.items():
            progress = self.steps[name]
            progress.state = cols["state"]
            kind = {StepState.FAILED: EventKind.STEP_FAILED,
                    StepState.CANCELLED: EventKind.STEP_CANCELLED}.get(
                        progress.state, EventKind.STEP_SKIPPED)
            started = progress.started if cols.get("finished") else None
            self._emit(kind, step=name, attempt=progress.attempt,
                       duration=None if started is None else now - started,
                       error=cols.get("error"), instance=cols.get("instance"))
        self._emit(EventKind.RUN_FINISHED, run_state=state, error=error,
                   steps={n: p.state for n, p in self.steps.items()})

    def _apply(self, *, run: Mapping[str, Any] | None = None,
               steps: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Every write of the driver: only while the run is ``running`` and still ours, so
        a cancel or a takeover by another process is never overwritten (RunConflict)."""
        self.store.apply(self.run_id, run=run, steps=steps,
                         expect={"state": RunState.RUNNING, "owner": self.cfg.owner})

    def _give_up(self, exc: RunConflict) -> None:
        """A write (or a lease renewal) found the run no longer ours: say why, write
        nothing more. Taken over once our lease had run out: that is :attr:`lost`."""
        self.lease.stop()
        if (exc.state is RunState.RUNNING and exc.owner != self.cfg.owner
                and self.lease.expired()):
            self.lost = self.lease.taken_over(exc.owner)
            log.warning("%s", self.lost.message)
        else:
            log.log(logging.INFO if exc.state is RunState.CANCELLED else logging.WARNING,
                    "workflow run %s: stopped driving it: %s", self.run_id, exc.message)
        self._lost()

    def _expired(self) -> None:
        """The lease ran out unrenewed: another host may take the run over from now on, so
        its steps here were stopped; give it up in the store if the store answers again."""
        self.lost = self.lease.ran_out()
        log.warning("%s", self.lost.message)
        self._release()

    def _lost(self) -> None:
        """The run ended or moved elsewhere: say what the store holds, write nothing."""
        try:
            record = self.store.get_run(self.run_id)
            steps = self.store.step_states(self.run_id)
        except Exception:
            log.exception("workflow run %s: cannot read it back", self.run_id)
            return
        if record.state.terminal:
            self._emit(EventKind.RUN_FINISHED, run_state=record.state, error=record.error,
                       steps={n: s.state for n, s in steps.items()})

    async def _halt(self) -> None:
        """Cancel every step task and wait for them to unwind (bounded by their cleanup)."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        hook = self.cfg.on_event
        if hook is None:
            return
        try:
            hook(Event(kind=kind, run_id=self.run_id, at=time.time(), **fields))
        except Exception:
            log.exception("workflow on_event hook failed on %s", kind.value)
