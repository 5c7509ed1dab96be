"""Durable workflows on the mesh: a library entry point, and a service.

Steps are called by :class:`agents.step_caller.MeshStepCaller` (one request per attempt,
idempotency key ``<run>/<step>``, the instance that failed a step avoided by its retry).
Retries are the workflow's (``retries`` per step), not the router's: the request is not
marked idempotent, so a killed agent fails the attempt visibly and the retry goes elsewhere.

:func:`run_workflow` runs one workflow from a script or the CLI; :class:`Orchestrator`
serves ``agp/system/orchestrator`` (run, status, cancel, list, resume, outputs) and resumes
at start the runs a dead orchestrator left running. Large outputs go to the artifact store
by reference (the runner spills anything of 256 KiB or more).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agents.base import Context, action
from agents.common import WorkAgent, work
from agents.step_caller import DEFAULT_STEP_TIMEOUT, MeshStepCaller, ProgressHook
from mesh.aio import AsyncMesh
from mesh.errors import ConfigError, Error, ErrorCode, InternalError
from mesh.workflow import (
    ArtifactStore,
    Event,
    RunRecord,
    RunState,
    StepRecord,
    StepResult,
    Store,
    WorkflowRunner,
    WorkflowSpec,
    WorkflowSpecError,
    load_spec,
    open_store,
    validate,
)
from mesh.workflow.owner import owner_gone

log = logging.getLogger("agp.orchestrator")

CATALOG_TRIES: Final = 3  # looks at the router's catalog before a name is called unknown
CATALOG_WAIT: Final = 1.0  # seconds between them

ORCHESTRATOR_SERVICE: Final = "agp/system/orchestrator"
DEFAULT_STORE: Final = "sqlite:///run/workflows.db"
CANCEL_POLL_S: Final = 0.25
WATCH_MAX_PAUSE_S: Final = 5.0


def artifacts_dir_for(store_url: str) -> Path:
    """Artifacts live beside a SQLite run store (``run/workflows.db`` -> ``run/artifacts``)."""
    if store_url.startswith("sqlite:///") and len(store_url) > len("sqlite:///"):
        return Path(store_url[len("sqlite:///"):]).parent / "artifacts"
    if "://" not in store_url:
        return Path(store_url).parent / "artifacts"
    return Path("run/artifacts")


def run_status(store: Store, run_id: str, caller: MeshStepCaller | None = None) -> dict[str, Any]:
    """A run as plain data: its state, every step, live progress and breaker states."""
    record = store.get_run(run_id)
    steps = store.step_states(record.id)
    live = caller.progress.get(record.id, {}) if caller is not None else {}
    return {**run_summary(record),
            "steps": [step_summary(s, live.get(s.name)) for s in steps.values()],
            "breakers": caller.breaker_states() if caller is not None else {}}


def run_summary(record: RunRecord) -> dict[str, Any]:
    return {"run": record.id, "name": record.name, "state": record.state.value,
            "error": record.error, "created": record.created, "updated": record.updated,
            "owner": record.owner, "lease_until": record.lease_until}


def step_summary(step: StepRecord, progress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {"name": step.name, "state": step.state.value, "attempt": step.attempt,
           "failures": step.failures, "duration": step.duration, "instance": step.instance,
           "error": step.error, "avoid": list(step.avoid)}
    if progress is not None and step.state.value == "running":
        out["progress"] = dict(progress)
    return out


async def watch_cancels(store: Store, runner: WorkflowRunner, *, poll: float = CANCEL_POLL_S,
                        max_pause: float = WATCH_MAX_PAUSE_S) -> None:
    """Cancel here the runs another process marked cancelled in the store (``agp workflow
    cancel``): the store is the one place every process can reach.

    Runs until cancelled. A store error (locked past its busy timeout, the database
    unreachable) must not end the watch, or no cancel would ever be heard again: it is
    logged (the first of a streak, then every 20th) and the pause between polls doubles, up
    to ``max_pause``, until a poll goes through.
    """
    pause, failing = poll, 0
    while True:  # until cancelled: one poll per pause
        await asyncio.sleep(pause)
        errors: list[str] = []
        for run_id in runner.active_runs:
            try:
                if store.get_run(run_id).state is RunState.CANCELLED:
                    await runner.cancel(run_id)
            except Exception as exc:  # any store failure: this poll failed, the watch goes on
                errors.append(f"{run_id}: {exc}")
        if not errors:
            if failing:
                log.info("cancel watch: the store answers again after %d failed polls",
                         failing)
            pause, failing = poll, 0
            continue
        if failing % 20 == 0:
            log.warning("cancel watch: the store failed (%d in a row; next poll in %.2g s): %s",
                        failing + 1, min(max_pause, pause * 2), "; ".join(errors))
        failing += 1
        pause = min(max_pause, pause * 2)


@dataclass
class WorkflowResult:
    """What :func:`run_workflow` returns."""

    record: RunRecord
    steps: dict[str, StepRecord]
    outputs: dict[str, Any]
    breakers: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return self.record.state is RunState.SUCCEEDED


async def run_workflow(spec: WorkflowSpec | Mapping[str, Any] | str | Path,
                       endpoint: str | None = None, store_url: str = DEFAULT_STORE, *,
                       artifacts_dir: str | Path | None = None,
                       on_event: Callable[[Event], None] | None = None,
                       on_progress: ProgressHook | None = None,
                       on_start: Callable[[str], Any] | None = None,
                       resume: str | None = None, force: bool = False,
                       timeout: float | None = None,
                       mesh: AsyncMesh | None = None,
                       check_names: bool = True) -> WorkflowResult:
    """Run (or ``resume``) a workflow on the mesh at ``endpoint`` and wait for its end.

    ``spec`` is a dict, a WorkflowSpec or a .toml/.json path. State goes to ``store_url``;
    if this process dies, ``resume`` with the run id (``on_start`` receives it) continues it
    without re-running finished steps (``force``: even if its owner may be alive, see
    :meth:`WorkflowRunner.resume`). On ``timeout`` the run is left running, resumable.
    A new run's agents and actions are first checked against what the router serves now
    (:func:`mesh_catalog`; ``check_names=False`` for agents that join later): a step naming
    anything else refuses the whole spec, every such step listed, before anything runs.
    """
    if not isinstance(spec, (WorkflowSpec, Mapping)) and resume is None:
        spec = load_spec(spec)
    store = open_store(store_url)
    own_mesh = mesh is None
    watcher: asyncio.Task[None] | None = None
    runner: WorkflowRunner | None = None
    try:
        artifacts = ArtifactStore(artifacts_dir or artifacts_dir_for(store_url))
        if resume is not None:
            store.get_run(resume)  # RunNotFound at once, not after finding a router
        if mesh is None:
            mesh = await AsyncMesh.connect(endpoint)
        caller = MeshStepCaller(mesh, on_progress=on_progress)
        runner = WorkflowRunner(store, caller, artifact_store=artifacts, on_event=on_event,
                                default_timeout=DEFAULT_STEP_TIMEOUT)
        if resume is not None:
            run_id = await runner.resume(resume, force=force)
        else:
            assert isinstance(spec, (WorkflowSpec, Mapping))
            if check_names:  # every unknown agent or action listed before any runs
                spec = await checked_names(spec, mesh)
            run_id = await runner.start(spec)
        if on_start is not None:
            on_start(run_id)
        watcher = asyncio.get_running_loop().create_task(watch_cancels(store, runner))
        record = await runner.wait(run_id, timeout=timeout)
        outputs = runner.outputs(run_id) if record.state is RunState.SUCCEEDED else {}
        return WorkflowResult(record, store.step_states(run_id), outputs,
                              caller.breaker_states())
    finally:
        if watcher is not None:
            watcher.cancel()
        if runner is not None:
            await runner.close()
        store.close()
        if own_mesh and mesh is not None:
            await mesh.close()


async def checked_names(spec: WorkflowSpec | Mapping[str, Any], mesh: AsyncMesh
                        ) -> WorkflowSpec | Mapping[str, Any]:
    """``spec`` validated, its agents and actions against :func:`mesh_catalog`. A name the
    router does not serve now is looked up again (``CATALOG_TRIES`` times, ``CATALOG_WAIT``
    apart) before the spec is refused: the router forgets a service whose last instance
    left, and a crashed agent is back within seconds."""
    checked = validate(spec)  # what is wrong whatever runs: at once
    for attempt in range(CATALOG_TRIES):
        catalog = await mesh_catalog(mesh)
        if catalog is None:  # the router does not say: names are checked as steps run
            return checked
        try:
            return validate(checked, catalog=catalog)
        except WorkflowSpecError:
            if attempt == CATALOG_TRIES - 1:
                raise
        await asyncio.sleep(CATALOG_WAIT)
    return checked


async def mesh_catalog(mesh: AsyncMesh) -> dict[str, list[str] | None] | None:
    """``{service: the actions its instances serve}`` for the services this identity may
    call, as the router knows them now (None for a service whose agents name none: any
    action), or None when the router does not say (an older router): names are then
    checked as the steps run."""
    try:
        served = await mesh.request("agp/router", "catalog", timeout=5.0)
    except Error as exc:
        if exc.code not in (ErrorCode.NO_SUCH_ACTION, ErrorCode.FORBIDDEN):
            log.warning("no catalog from the router (%s): agent names are checked as the "
                        "steps run", exc)
        return None
    if not isinstance(served, Mapping):
        return None
    return {name: [a for a in actions if isinstance(a, str)] or None
            for name, actions in served.items()
            if isinstance(name, str) and isinstance(actions, list)}


async def cancel_in_store(store_url: str, run_id: str) -> RunRecord:
    """Mark a run cancelled in its store; the process driving it (a CLI run or the
    orchestrator service) sees that within :data:`CANCEL_POLL_S` and stops its steps."""

    async def never(*_args: Any) -> StepResult:
        raise InternalError("a cancelling runner runs no step")

    store = open_store(store_url)
    try:
        runner = WorkflowRunner(store, never, artifact_store=ArtifactStore(
            artifacts_dir_for(store_url)))
        return await runner.cancel(run_id)
    finally:
        store.close()


def _run_id(data: Any) -> str:
    run_id = data.get("run") if isinstance(data, Mapping) else data
    if not isinstance(run_id, str) or not run_id:
        raise ConfigError("give the run id as a string or {'run': id}")
    return run_id


class Orchestrator(WorkAgent):
    """``agp/system/orchestrator``: durable workflow runs as a mesh service.

    Its store is ``AGP_WORKFLOW_STORE`` (default ``sqlite:///run/workflows.db``), artifacts
    under ``AGP_ARTIFACTS`` (default beside the store). At start it resumes every run left
    ``running`` by an orchestrator process that is gone (dead on this host, or on another
    host with its lease run out).
    """

    name = "orchestrator"
    namespace = "agp/system"
    capacity = 64

    async def on_start(self) -> None:
        url = os.environ.get("AGP_WORKFLOW_STORE") or DEFAULT_STORE
        self.store = await asyncio.to_thread(open_store, url)
        artifacts = ArtifactStore(os.environ.get("AGP_ARTIFACTS") or artifacts_dir_for(url))
        self.caller = MeshStepCaller(self.mesh)
        self.runner = WorkflowRunner(self.store, self.caller, artifact_store=artifacts,
                                     default_timeout=DEFAULT_STEP_TIMEOUT)
        self.resumed: list[str] = []
        for record in self.store.list_runs(state=RunState.RUNNING, limit=1000):
            if not owner_gone(record.owner, record.lease_until):
                continue  # a live process here, or another host's that holds its lease
            try:
                self.resumed.append(await self.runner.resume(record.id))
            except Error as exc:  # one broken run must not keep the service down
                log.error("cannot resume run %s: %s", record.id, exc)
        self._watcher = asyncio.get_running_loop().create_task(
            watch_cancels(self.store, self.runner))

    async def on_stop(self) -> None:
        self._watcher.cancel()
        await self.runner.close()  # runs stay ``running``: the next orchestrator resumes them
        self.store.close()

    def extra_stats(self) -> dict[str, Any]:
        return {"active_runs": self.runner.active_runs, "resumed": self.resumed,
                "breakers": self.caller.breaker_states()}

    @action(name="run")  # not ``run``: that is the Agent's own lifecycle method
    @work
    async def start_run(self, data: Any, ctx: Context) -> Any:
        """Start a run of ``data["spec"]`` (or ``data`` itself); with ``wait`` true, answer
        when it ends (within the request's deadline)."""
        wait = isinstance(data, Mapping) and bool(data.get("wait"))
        spec = data.get("spec", data) if isinstance(data, Mapping) else data
        if not isinstance(spec, Mapping):
            raise ConfigError("run needs a workflow spec (a mapping)")
        run_id = await self.runner.start(spec)
        if wait:
            try:
                await self.runner.wait(run_id, timeout=max(0.001, ctx.remaining() - 0.5))
            except asyncio.TimeoutError:
                pass  # still running: the status says so
        return run_status(self.store, run_id, self.caller)

    @action()
    @work
    async def status(self, data: Any, ctx: Context) -> Any:
        """One run's status (``{"run": id}``), or every recent run and the breakers."""
        if data is None or (isinstance(data, Mapping) and "run" not in data):
            return {"runs": [run_summary(r) for r in self.store.list_runs(limit=50)],
                    "active": self.runner.active_runs, "breakers": self.caller.breaker_states()}
        return run_status(self.store, _run_id(data), self.caller)

    @action(name="list")
    @work
    async def list_runs(self, data: Any, ctx: Context) -> Any:
        """Recent runs, newest first (``state`` and ``limit`` optional)."""
        opts = data if isinstance(data, Mapping) else {}
        state = RunState(opts["state"]) if opts.get("state") else None
        return [run_summary(r) for r in self.store.list_runs(
            state=state, limit=int(opts.get("limit", 100)))]

    @action()
    @work
    async def cancel(self, data: Any, ctx: Context) -> Any:
        """Cancel a run: steps in flight are told to stop; the run ends ``cancelled``."""
        record = await self.runner.cancel(_run_id(data))
        return run_status(self.store, record.id, self.caller)

    @action()
    @work
    async def resume(self, data: Any, ctx: Context) -> Any:
        """Continue a run from the store; finished steps are not run again. A run another
        live (or remote) owner drives is refused unless ``{"run": id, "force": true}``."""
        force = isinstance(data, Mapping) and data.get("force") is True
        run_id = await self.runner.resume(_run_id(data), force=force)
        return run_status(self.store, run_id, self.caller)

    @action()
    @work
    def outputs(self, data: Any, ctx: Context) -> Any:
        """The outputs of a run's succeeded steps (``steps`` to choose some)."""
        run_id = self.store.get_run(_run_id(data)).id
        found = self.runner.outputs(run_id)
        wanted = data.get("steps") if isinstance(data, Mapping) else None
        return {k: v for k, v in found.items() if wanted is None or k in wanted}


if __name__ == "__main__":
    Orchestrator.main()
