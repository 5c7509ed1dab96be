"""The mesh step caller's circuit breakers, between real processes (router, an agent that
never answers in time, this test as the orchestrator): a step that times out counts as a
failure of its destination, so repeated timeouts open the breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.procs import ManagedProcess, agent_process
from agents.step_caller import MeshStepCaller
from mesh import AsyncMesh
from mesh.workflow import ArtifactStore, RunState, WorkflowRunner, open_store

from ._helpers import DEADLINE, run_async

NAMESPACE = "test/wf"
SERVICE = f"{NAMESPACE}/slow_step"


def test_step_timeouts_open_the_destinations_breaker(
        router: ManagedProcess, spawn: Callable[..., ManagedProcess],
        enroll: Callable[..., str], tmp_path: Path) -> None:
    identity = enroll("slow-step-1", NAMESPACE)
    spawn(agent_process("tests.workflow.slow_step_agent", router.ready_info["router"],
                        name="slow1", extra=["--namespace", NAMESPACE, "--instance", "slow1",
                                             "--identity", identity]))
    spec = {"hang": {"agent": SERVICE, "timeout": 0.3, "retries": 6, "backoff": 0,
                     "params": {"seconds": 30}}}

    async def main() -> Any:
        async with await AsyncMesh.connect(router.ready_info["router"]) as mesh:
            caller = MeshStepCaller(mesh)
            with open_store(str(tmp_path / "runs.db")) as store:
                runner = WorkflowRunner(store, caller, max_backoff=0.01,
                                        artifact_store=ArtifactStore(tmp_path / "artifacts"))
                record = await runner.run(spec)
                breaker = mesh.breaker(SERVICE)
                assert breaker is not None
                return (record, store.step_states(record.id)["hang"],
                        caller.breaker_states(), breaker.failures)

    record, step, states, failures = run_async(main())
    assert record.state is RunState.FAILED
    assert states == {SERVICE: "open"}
    assert failures == 5  # the breaker's threshold: five timeouts in a row
    assert step.failures == 7  # then the attempts left failed at once, nothing sent
    assert step.error is not None
    assert f"circuit for {SERVICE} is open" in step.error


def test_a_cancelled_step_does_not_count_against_the_breaker(
        router: ManagedProcess, spawn: Callable[..., ManagedProcess],
        enroll: Callable[..., str], tmp_path: Path) -> None:
    identity = enroll("slow-step-2", NAMESPACE)
    spawn(agent_process("tests.workflow.slow_step_agent", router.ready_info["router"],
                        name="slow2", extra=["--namespace", NAMESPACE, "--instance", "slow2",
                                             "--identity", identity]))
    spec = {"hang": {"agent": SERVICE, "params": {"seconds": 30}}}

    async def main() -> Any:
        async with await AsyncMesh.connect(router.ready_info["router"]) as mesh:
            reached = asyncio.Event()
            caller = MeshStepCaller(mesh, on_progress=lambda *_: reached.set())
            with open_store(str(tmp_path / "runs.db")) as store:
                runner = WorkflowRunner(store, caller,
                                        artifact_store=ArtifactStore(tmp_path / "artifacts"))
                records = []
                for _ in range(6):  # more cancels than the breaker's threshold
                    reached.clear()
                    run_id = await runner.start(spec)
                    await asyncio.wait_for(reached.wait(), DEADLINE)  # the agent is at it
                    records.append(await runner.cancel(run_id))
                breaker = mesh.breaker(SERVICE)
                assert breaker is not None
                return records, caller.breaker_states(), breaker.failures

    records, states, failures = run_async(main())
    assert [r.state for r in records] == [RunState.CANCELLED] * 6
    assert states == {SERVICE: "closed"}
    assert failures == 0


def test_a_payload_that_cannot_be_encoded_takes_no_half_open_trial(
        router: ManagedProcess) -> None:
    """Encoding fails before anything is sent: the half-open breaker's one trial slot stays
    free for a call that can tell whether the destination is back."""
    from mesh.breaker import CircuitOpen, State

    async def main() -> tuple[str, State]:
        async with await AsyncMesh.connect(router.ready_info["router"]) as mesh:
            caller = MeshStepCaller(mesh)
            breaker = mesh.breaker(SERVICE)
            assert breaker is not None
            breaker.state, breaker.opened_at = State.OPEN, 0.0  # its open interval is over
            try:
                await caller.request(SERVICE, "run", {"x": object()}, "k1", 5.0,
                                     lambda *_: None)
            except TypeError as exc:
                error = type(exc).__name__
            try:
                breaker.before_call()  # the trial: still free
            except CircuitOpen:
                return "CircuitOpen", breaker.state
            return error, breaker.state

    assert run_async(main()) == ("TypeError", State.HALF_OPEN)
