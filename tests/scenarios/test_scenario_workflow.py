"""Scenario 1 end to end over real processes, and the orchestrator under failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents.local_mesh import LocalMesh
from agents.orchestrator import cancel_in_store, run_workflow
from agents.procs import ManagedProcess
from agents.scenarios import ml_workflow, run_ml_scenario
from mesh import Malformed, Mesh
from mesh.workflow import RunState, StepState, WorkflowSpecError, open_store
from tests.helpers import wait_for


def test_ml_scenario_end_to_end(endpoint: str, store_url: str) -> None:
    result = asyncio.run(run_ml_scenario(endpoint, spec=ml_workflow(dataset="iris"),
                                         store_url=store_url, predictions=64))
    assert result["state"] == "succeeded", result["error"]
    assert [s["name"] for s in result["steps"]] == [
        "data_collection", "preprocessing", "training", "evaluation", "deployment"]
    assert all(s["attempt"] == 1 for s in result["steps"])
    assert result["metrics"]["accuracy"] > 0.85
    assert result["deployed"]["version"] >= 1
    serving = result["serving"]
    assert serving["requests"] == 64
    assert serving["agreement"] > 0.85
    assert serving["batches"] < 64  # concurrent single rows shared model calls
    assert set(result["breakers"].values()) == {"closed"}


def test_poison_input_fails_its_step_and_the_agent_keeps_serving(
        endpoint: str, client: Mesh, store_url: str) -> None:
    poison = {"name": "poison", "steps": {"describe": {
        "agent": "data_analyst", "retries": 1, "backoff": 0.05,
        "params": {"X": [[1.0, 2.0]], "feature_names": 5}}}}
    before = client.request("data_analyst", "stats")["failures"].get("describe", 0)
    result = asyncio.run(run_workflow(poison, endpoint, store_url))
    assert result.record.state is RunState.FAILED
    step = result.steps["describe"]
    assert step.state is StepState.FAILED
    assert step.error.startswith("HANDLER_ERROR: TypeError")
    assert step.failures == 2  # retried once (on the only instance), failed both times
    stats = client.request("data_analyst", "stats")
    assert stats["failures"]["describe"] == before + 2
    fine = client.request("data_analyst", "describe", {"X": [[1.0, 2.0], [3.0, 4.0]]})
    assert fine["x0"]["count"] == 2


def test_unknown_agents_and_actions_are_listed_before_anything_runs(
        endpoint: str, store_url: str) -> None:
    """The router knows which services run and which actions their agents serve: a spec
    naming others is refused whole, every problem listed, and no run is recorded."""
    spec = {"name": "typos", "steps": {
        "ok": {"agent": "data_analyst", "action": "describe"},
        "agent_typo": {"agent": "data_analyts", "action": "describe"},
        "action_typo": {"agent": "data_analyst", "action": "descibe", "depends_on": ["ok"]}}}
    with pytest.raises(WorkflowSpecError) as refused:
        asyncio.run(run_workflow(spec, endpoint, store_url))
    problems = refused.value.problems
    assert any("unknown agent 'data_analyts'" in p for p in problems), problems
    assert any("has no action 'descibe'" in p and "describe" in p for p in problems), problems
    assert len(problems) == 2, problems
    store = open_store(store_url)
    try:
        assert "typos" not in [r.name for r in store.list_runs()]
    finally:
        store.close()


def _trainers(local_mesh: LocalMesh, extra: list[ManagedProcess], name: str
              ) -> list[ManagedProcess]:
    procs = [local_mesh.agent("ml_trainer", f"{name}-{i}", name=name) for i in range(2)]
    extra.extend(procs)
    local_mesh.start_all(procs)
    return procs


def test_trainer_killed_mid_step_is_retried_on_the_other(
        local_mesh: LocalMesh, extra_agents: list[ManagedProcess], store_url: str) -> None:
    procs = _trainers(local_mesh, extra_agents, "kill_trainer")
    killed: list[str] = []

    def kill_first(run_id: str, step: str, instance: str, fraction: float, msg: str) -> None:
        if step == "training" and not killed:
            killed.append(instance)
            next(p for p in procs if instance.endswith("/" + p.name)).kill()

    spec = ml_workflow(model="random_forest", hyperparams={"n_estimators": 600},
                       agents={"ml_trainer": "test/scn/kill_trainer"})
    result = asyncio.run(run_workflow(spec, local_mesh.endpoint, store_url,
                                      on_progress=kill_first))
    assert result.succeeded, result.record.error
    training = result.steps["training"]
    assert training.attempt == 2
    assert training.failures == 1
    assert killed[0] in training.avoid
    assert training.instance.startswith("test/scn/kill_trainer/")
    assert training.instance != killed[0]
    assert [p.alive() for p in procs].count(True) == 1
    assert result.outputs["evaluation"]["metrics"]["accuracy"] > 0.9


def test_cancel_from_another_process_stops_the_running_step(
        endpoint: str, client: Mesh, store_url: str) -> None:
    seen: dict[str, Any] = {}

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        cancels: list[asyncio.Task[Any]] = []

        def on_progress(run_id: str, step: str, instance: str, fraction: float, msg: str
                        ) -> None:
            if step == "training" and not cancels:
                seen["instance"] = instance
                cancels.append(loop.create_task(cancel_in_store(store_url, run_id)))

        spec = ml_workflow(model="random_forest", hyperparams={"n_estimators": 2000})
        result = await run_workflow(spec, endpoint, store_url, on_progress=on_progress)
        await asyncio.gather(*cancels)
        return result

    trainers = [f"test/scn/ml_trainer/ml_trainer-{i}" for i in range(2)]
    before = {name: client.request(name, "stats")["cancelled"] for name in trainers}
    result = asyncio.run(main())
    assert result.record.state is RunState.CANCELLED
    assert result.steps["training"].state is StepState.CANCELLED
    assert result.steps["deployment"].state is StepState.CANCELLED  # never started
    assert result.steps["preprocessing"].state is StepState.SUCCEEDED
    wait_for(lambda: client.request(seen["instance"], "stats")["cancelled"]
             > before[seen["instance"]],
             timeout=15, message="the trainer stopped training")
    assert client.request(seen["instance"], "stats")["instance"] == seen["instance"]


def test_orchestrator_killed_mid_run_resumes_without_rerunning(
        local_mesh: LocalMesh, extra_agents: list[ManagedProcess], client: Mesh,
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orchestrator.db'}"
    service = "test/orch/orchestrator"

    def orchestrator(instance: str) -> ManagedProcess:
        proc = local_mesh.agent("orchestrator", instance, namespace="test/orch",
                                env={"AGP_WORKFLOW_STORE": url})
        extra_agents.append(proc)
        local_mesh.start_all([proc])
        return proc

    first = orchestrator("orch-a")
    with pytest.raises(Malformed, match="depends on itself"):
        client.request(service, "run", {"spec": {"a": {"agent": "x", "depends_on": ["a"]}}})
    spec = ml_workflow(model="random_forest", hyperparams={"n_estimators": 800})
    run_id = client.request(service, "run", {"spec": spec})["run"]
    store = open_store(url)
    try:
        wait_for(lambda: store.step_states(run_id)["training"].state is StepState.RUNNING,
                 timeout=30, message="training started")
        calls = client.request("data_analyst", "stats")["calls"]
        first.kill()
        orchestrator("orch-b")  # resumes at start the run whose owner is gone
        wait_for(lambda: store.get_run(run_id).state.terminal, timeout=60,
                 message="the resumed run ended")
        steps = store.step_states(run_id)
        assert store.get_run(run_id).state is RunState.SUCCEEDED
    finally:
        store.close()
    assert steps["data_collection"].attempt == 1
    assert steps["preprocessing"].attempt == 1
    assert steps["training"].attempt == 2  # in flight at the kill: run again
    after = client.request("data_analyst", "stats")["calls"]
    assert after["data_collection"] == calls["data_collection"]
    assert after["preprocessing"] == calls["preprocessing"]
    status = client.request(service, "status", {"run": run_id[:8]})
    assert status["state"] == "succeeded"
    assert status["breakers"]["ml_trainer"] == "closed"
    assert run_id in client.request(service, "stats")["resumed"]


def test_breaker_opens_for_a_missing_service_and_shows_in_the_result(
        endpoint: str, store_url: str) -> None:
    spec = {"name": "nobody", "steps": {"ask": {
        "agent": "test/scn/nobody_home", "retries": 6, "backoff": 0.01}}}
    # (a service that is gone at run time: the up-front check would refuse the spec)
    result = asyncio.run(run_workflow(spec, endpoint, store_url, check_names=False))
    assert result.record.state is RunState.FAILED
    assert result.breakers == {"test/scn/nobody_home": "open"}
    assert "circuit for test/scn/nobody_home is open" in result.steps["ask"].error
    assert result.steps["ask"].failures == 7  # five refusals opened it; two never left
