"""The runner with in-process step functions: flow, parallelism, timeouts, retries,
failure, cancellation, large outputs and resume."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.errors import NoSuchAction, Unavailable
from mesh.workflow import (
    CURRENT_RUN,
    ArtifactStore,
    Event,
    EventKind,
    RunState,
    StepResult,
    StepSpec,
    StepState,
    Store,
    WorkflowRunner,
    WorkflowSpecError,
    backoff_delay,
)

from ._helpers import run_async

Fn = Callable[..., Awaitable[Any]]


class Calls:
    """Dispatches each step to a test coroutine and records every call."""

    def __init__(self, fns: dict[str, Fn]) -> None:
        self.fns = fns
        self.log: list[tuple[str, int, frozenset[str], dict[str, Any]]] = []
        self.cancelled: list[str] = []

    async def __call__(self, step: StepSpec, inputs: dict[str, Any], attempt: int,
                       avoid: set[str]) -> StepResult:
        self.log.append((step.name, attempt, frozenset(avoid), inputs))
        try:
            out = await self.fns[step.name](step=step, inputs=inputs, attempt=attempt)
        except asyncio.CancelledError:
            self.cancelled.append(step.name)
            raise
        return out if isinstance(out, StepResult) else StepResult(out, f"{step.agent}/1")

    def count(self, name: str) -> int:
        return sum(1 for entry in self.log if entry[0] == name)


def runner(store: Store, artifacts: ArtifactStore, calls: Calls, **kw: Any) -> WorkflowRunner:
    return WorkflowRunner(store, calls, artifact_store=artifacts, rng=random.Random(7), **kw)


async def forever(**_: Any) -> None:
    await asyncio.Event().wait()


def echo(value: Any) -> Fn:
    async def fn(**_: Any) -> Any:
        return value
    return fn


def test_outputs_flow_to_dependents(store: Store, artifacts: ArtifactStore) -> None:
    async def report(*, inputs: dict[str, Any], step: StepSpec, **_: Any) -> Any:
        return {"sum": inputs["left"]["n"] + inputs["right"]["n"], "p": step.params["p"]}

    async def side(*, inputs: dict[str, Any], step: StepSpec, **_: Any) -> Any:
        return {"n": inputs["root"]["n"] * (2 if step.name == "left" else 3)}

    calls = Calls({"root": echo({"n": 5}), "left": side, "right": side, "report": report})
    spec = {"root": {"agent": "a"},
            "left": {"agent": "b", "depends_on": ["root"]},
            "right": {"agent": "b", "depends_on": ["root"]},
            "report": {"agent": "c", "depends_on": ["left", "right"], "params": {"p": "x"}}}

    async def main() -> Any:
        r = runner(store, artifacts, calls)
        record = await r.run(spec)
        return record, r.outputs(record.id)

    record, outputs = run_async(main())
    assert record.state is RunState.SUCCEEDED
    assert record.error is None
    assert outputs["report"] == {"sum": 25, "p": "x"}
    report_inputs = next(e[3] for e in calls.log if e[0] == "report")
    assert report_inputs == {"left": {"n": 10}, "right": {"n": 15}}
    steps = store.step_states(record.id)
    assert all(s.state is StepState.SUCCEEDED and s.attempt == 1 for s in steps.values())
    assert steps["root"].instance == "a/1"


def test_independent_steps_run_in_parallel(store: Store, artifacts: ArtifactStore) -> None:
    started = {"b": asyncio.Event(), "c": asyncio.Event()}

    async def meet(*, step: StepSpec, **_: Any) -> str:
        started[step.name].set()
        other = "c" if step.name == "b" else "b"
        await asyncio.wait_for(started[other].wait(), 20)  # fails unless both run at once
        return step.name

    calls = Calls({"a": echo(1), "b": meet, "c": meet})
    spec = {"a": {"agent": "x"}, "b": {"agent": "x", "depends_on": ["a"]},
            "c": {"agent": "x", "depends_on": ["a"]}}
    record = run_async(runner(store, artifacts, calls).run(spec))
    assert record.state is RunState.SUCCEEDED


def test_max_parallel_bounds_steps_in_flight(store: Store, artifacts: ArtifactStore) -> None:
    in_flight, peak = 0, 0

    async def work(**_: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1

    calls = Calls({n: work for n in "abcd"})
    record = run_async(runner(store, artifacts, calls, max_parallel=2).run(
        {n: {"agent": "x"} for n in "abcd"}))
    assert record.state is RunState.SUCCEEDED
    assert peak == 2


def test_timeout_fails_the_step_with_deadline_exceeded(store: Store,
                                                       artifacts: ArtifactStore) -> None:
    events: list[Event] = []
    calls = Calls({"slow": forever})
    record = run_async(runner(store, artifacts, calls, on_event=events.append).run(
        {"slow": {"agent": "x", "timeout": 0.2}}))
    assert record.state is RunState.FAILED
    assert record.error == ("step 'slow' failed: DEADLINE_EXCEEDED: "
                            "step 'slow' exceeded its 0.2 s timeout")
    assert calls.cancelled == ["slow"]
    step = store.step_states(record.id)["slow"]
    assert step.state is StepState.FAILED
    assert step.finished is not None
    assert [e.kind for e in events][-2:] == [EventKind.STEP_FAILED, EventKind.RUN_FINISHED]


def test_default_timeout_applies_to_steps_without_one(store: Store,
                                                      artifacts: ArtifactStore) -> None:
    record = run_async(runner(store, artifacts, Calls({"s": forever}), default_timeout=0.1).run(
        {"s": {"agent": "x"}}))
    assert record.state is RunState.FAILED
    assert "exceeded its 0.1 s timeout" in (record.error or "")


def test_retry_goes_elsewhere_then_succeeds(store: Store, artifacts: ArtifactStore) -> None:
    class Flaky(RuntimeError):
        instance = "x/2"

    async def flaky(*, attempt: int, **_: Any) -> StepResult:
        if attempt == 1:
            raise Unavailable("worker died", details={"instance": "x/1"})
        if attempt == 2:
            raise Flaky("out of memory")
        return StepResult({"ok": True}, "x/3")

    events: list[Event] = []
    calls = Calls({"s": flaky})
    record = run_async(runner(store, artifacts, calls, on_event=events.append).run(
        {"s": {"agent": "x", "retries": 2, "backoff": 0.01}}))
    assert record.state is RunState.SUCCEEDED
    assert [(e[1], e[2]) for e in calls.log] == [
        (1, frozenset()), (2, frozenset({"x/1"})), (3, frozenset({"x/1", "x/2"}))]
    step = store.step_states(record.id)["s"]
    assert (step.attempt, step.failures, step.instance, step.avoid) == (
        3, 2, "x/3", ("x/1", "x/2"))
    retries = [e for e in events if e.kind is EventKind.STEP_RETRYING]
    assert [e.error for e in retries] == ["UNAVAILABLE: worker died", "Flaky: out of memory"]
    assert all(e.delay is not None and 0 < e.delay <= 0.04 for e in retries)


def test_retries_run_out(store: Store, artifacts: ArtifactStore) -> None:
    async def broken(**_: Any) -> None:
        raise ValueError("bad input")

    calls = Calls({"s": broken})
    record = run_async(runner(store, artifacts, calls).run(
        {"s": {"agent": "x", "retries": 2, "backoff": 0}}))
    assert record.state is RunState.FAILED
    assert calls.count("s") == 3
    assert store.step_states(record.id)["s"].failures == 3


def test_non_retryable_errors_fail_at_once(store: Store, artifacts: ArtifactStore) -> None:
    async def missing(**_: Any) -> None:
        raise NoSuchAction("no action 'train'")

    calls = Calls({"s": missing})
    record = run_async(runner(store, artifacts, calls).run(
        {"s": {"agent": "x", "retries": 5, "backoff": 0}}))
    assert record.state is RunState.FAILED
    assert calls.count("s") == 1


def test_unstorable_output_fails_the_step(store: Store, artifacts: ArtifactStore) -> None:
    calls = Calls({"s": echo({1, 2, 3})})
    record = run_async(runner(store, artifacts, calls).run({"s": {"agent": "x", "retries": 3}}))
    assert record.state is RunState.FAILED
    assert "cannot store a step output of type set" in (record.error or "")
    assert calls.count("s") == 1


def test_a_failed_step_cancels_its_siblings(store: Store, artifacts: ArtifactStore) -> None:
    b_started = asyncio.Event()

    async def fail_once_b_runs(**_: Any) -> None:
        await asyncio.wait_for(b_started.wait(), 20)
        raise ValueError("bad data")

    async def b(**_: Any) -> None:
        b_started.set()
        await forever()

    calls = Calls({"a": fail_once_b_runs, "b": b})
    spec = {"a": {"agent": "x"}, "b": {"agent": "x"},
            "c": {"agent": "x", "depends_on": ["a"]}, "d": {"agent": "x", "depends_on": ["b"]}}
    record = run_async(runner(store, artifacts, calls).run(spec))
    assert record.state is RunState.FAILED
    assert record.error == "step 'a' failed: ValueError: bad data"
    states = {n: s.state for n, s in store.step_states(record.id).items()}
    assert states == {"a": StepState.FAILED, "b": StepState.CANCELLED,
                      "c": StepState.SKIPPED, "d": StepState.SKIPPED}
    assert calls.cancelled == ["b"]


def test_cancel_a_run(store: Store, artifacts: ArtifactStore) -> None:
    started = asyncio.Event()

    async def a(**_: Any) -> None:
        started.set()
        await forever()

    calls = Calls({"a": a})
    events: list[Event] = []

    async def main() -> Any:
        r = runner(store, artifacts, calls, on_event=events.append)
        run_id = await r.start({"a": {"agent": "x"}, "b": {"agent": "x", "depends_on": ["a"]}})
        await asyncio.wait_for(started.wait(), 20)
        record = await r.cancel(run_id)
        return record, r.active_runs

    record, active = run_async(main())
    assert record.state is RunState.CANCELLED
    assert active == []
    assert calls.cancelled == ["a"]
    states = {n: s.state for n, s in store.step_states(record.id).items()}
    assert states == {"a": StepState.CANCELLED, "b": StepState.CANCELLED}
    assert events[-1].kind is EventKind.RUN_FINISHED
    assert events[-1].run_state is RunState.CANCELLED


def test_cancel_an_orphaned_run(store: Store, artifacts: ArtifactStore) -> None:
    from mesh.workflow import load_spec
    orphan = store.create_run(load_spec({"a": {"agent": "x"}}))
    record = run_async(runner(store, artifacts, Calls({})).cancel(orphan.id[:8]))
    assert record.state is RunState.CANCELLED
    assert store.step_states(orphan.id)["a"].state is StepState.CANCELLED


def test_large_arrays_pass_by_reference(store: Store, artifacts: ArtifactStore,
                                        tmp_path: Path) -> None:
    matrix = np.arange(50 * 1024 * 1024 // 8, dtype=np.float64).reshape(-1, 1024)  # 50 MiB

    async def produce(**_: Any) -> Any:
        return {"matrix": matrix, "rows": matrix.shape[0]}

    async def consume(*, inputs: dict[str, Any], **_: Any) -> Any:
        got = inputs["produce"]["matrix"]
        return {"equal": bool(np.array_equal(got, matrix)), "shape": list(got.shape)}

    calls = Calls({"produce": produce, "consume": consume})
    record = run_async(runner(store, artifacts, calls).run(
        {"produce": {"agent": "x"}, "consume": {"agent": "y", "depends_on": ["produce"]}}))
    assert record.state is RunState.SUCCEEDED
    outputs = WorkflowRunner(store, calls, artifact_store=artifacts).outputs(record.id)
    assert outputs["consume"] == {"equal": True, "shape": [6400, 1024]}
    blob = store.load_output(record.id, "produce")
    assert blob is not None
    assert len(blob) < 1024
    refs = store.step_states(record.id)["produce"].output_refs
    assert len(refs) == 1
    sha = refs[0].rsplit("/", 1)[1]
    assert (artifacts.root / sha[:2] / sha).stat().st_size == matrix.nbytes
    db_bytes = sum(p.stat().st_size for p in tmp_path.glob("runs.db*"))
    assert db_bytes < 2 * 1024 * 1024


def test_resume_a_failed_run_reruns_only_unfinished_steps(store: Store,
                                                          artifacts: ArtifactStore) -> None:
    broken = True

    async def b(*, inputs: dict[str, Any], **_: Any) -> Any:
        if broken:
            raise RuntimeError("disk full")
        return inputs["a"] + 1

    calls = Calls({"a": echo(41), "b": b, "c": echo("done")})
    spec = {"a": {"agent": "x"}, "b": {"agent": "x", "depends_on": ["a"]},
            "c": {"agent": "x", "depends_on": ["b"]}}

    async def main() -> Any:
        nonlocal broken
        r = runner(store, artifacts, calls)
        first = await r.run(spec)
        broken = False
        run_id = await r.resume(first.id[:10])
        return first, await r.wait(run_id), r.outputs(run_id)

    first, second, outputs = run_async(main())
    assert first.state is RunState.FAILED
    assert second.id == first.id
    assert second.state is RunState.SUCCEEDED
    assert second.error is None
    assert outputs == {"a": 41, "b": 42, "c": "done"}
    assert (calls.count("a"), calls.count("b"), calls.count("c")) == (1, 2, 1)
    assert store.step_states(first.id)["b"].attempt == 2


def test_close_detaches_and_another_runner_resumes(store: Store,
                                                   artifacts: ArtifactStore) -> None:
    gate = asyncio.Event()
    b_started = asyncio.Event()

    async def b(*, inputs: dict[str, Any], **_: Any) -> Any:
        b_started.set()
        await gate.wait()
        return inputs["a"] * 2

    calls = Calls({"a": echo(21), "b": b})
    spec = {"a": {"agent": "x"}, "b": {"agent": "x", "depends_on": ["a"]}}

    async def main() -> Any:
        first = runner(store, artifacts, calls)
        run_id = await first.start(spec)
        await asyncio.wait_for(b_started.wait(), 20)
        await first.close()
        held = store.get_run(run_id)
        mid = (held.state, held.owner, store.step_states(run_id)["b"].state)
        gate.set()
        second = runner(store, artifacts, calls)
        await second.resume(run_id)
        return mid, await second.wait(run_id), second.outputs(run_id)

    mid, record, outputs = run_async(main())
    assert mid == (RunState.RUNNING, None, StepState.PENDING)  # released, nothing counted
    assert record.state is RunState.SUCCEEDED
    assert outputs == {"a": 21, "b": 42}
    assert (calls.count("a"), calls.count("b")) == (1, 2)


def test_resume_of_a_succeeded_run_does_nothing(store: Store, artifacts: ArtifactStore) -> None:
    calls = Calls({"a": echo(1)})

    async def main() -> Any:
        r = runner(store, artifacts, calls)
        done = await r.run({"a": {"agent": "x"}})
        await r.resume(done.id)
        return await r.wait(done.id)

    assert run_async(main()).state is RunState.SUCCEEDED
    assert calls.count("a") == 1


def test_invalid_spec_starts_nothing(store: Store, artifacts: ArtifactStore) -> None:
    with pytest.raises(WorkflowSpecError, match="depends on unknown step"):
        run_async(runner(store, artifacts, Calls({})).start(
            {"a": {"agent": "x", "depends_on": ["b"]}}))
    assert store.list_runs() == []


def test_call_step_sees_the_run_id(store: Store, artifacts: ArtifactStore) -> None:
    async def which(**_: Any) -> str:
        return CURRENT_RUN.get()

    calls = Calls({"a": which})

    async def main() -> Any:
        r = runner(store, artifacts, calls)
        record = await r.run({"a": {"agent": "x"}})
        return record.id, r.outputs(record.id)["a"]

    run_id, seen = run_async(main())
    assert seen == run_id


def test_a_broken_event_hook_does_not_break_the_run(store: Store,
                                                    artifacts: ArtifactStore) -> None:
    def hook(_: Event) -> None:
        raise RuntimeError("display crashed")

    record = run_async(runner(store, artifacts, Calls({"a": echo(1)}), on_event=hook).run(
        {"a": {"agent": "x"}}))
    assert record.state is RunState.SUCCEEDED


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(1)
    for failures in range(1, 12):
        full = min(10.0, 0.5 * 2 ** (failures - 1))
        delay = backoff_delay(0.5, failures, cap=10.0, rng=rng)
        assert full / 2 <= delay <= full
    assert backoff_delay(0, 3, cap=10, rng=rng) == 0.0


def test_a_step_that_cancels_itself_fails_the_run(store: Store, artifacts: ArtifactStore) -> None:
    async def rogue(**_: Any) -> None:
        raise asyncio.CancelledError

    calls = Calls({"a": rogue})
    record = run_async(runner(store, artifacts, calls).run(
        {"a": {"agent": "x", "retries": 2, "backoff": 0},
         "b": {"agent": "x", "depends_on": ["a"]}}))
    assert record.state is RunState.FAILED
    assert record.error == "step 'a' failed: CANCELLED: step 'a' was cancelled by its own call"
    assert calls.count("a") == 3
    assert store.step_states(record.id)["b"].state is StepState.SKIPPED


def test_wait_accepts_a_prefix_and_times_out(store: Store, artifacts: ArtifactStore) -> None:
    async def main() -> Any:
        r = runner(store, artifacts, Calls({"a": forever}))
        run_id = await r.start({"a": {"agent": "x"}})
        with pytest.raises(TimeoutError):
            await r.wait(run_id[:8], timeout=0.05)
        record = await r.cancel(run_id)
        return record, await r.wait(run_id[:8])

    cancelled, waited = run_async(main())
    assert cancelled.state is RunState.CANCELLED
    assert waited == cancelled


def test_a_timeout_error_from_the_step_is_not_mistaken_for_the_deadline(
        store: Store, artifacts: ArtifactStore) -> None:
    async def upstream_timeout(**_: Any) -> None:
        raise TimeoutError("the database did not answer")

    record = run_async(runner(store, artifacts, Calls({"a": upstream_timeout})).run(
        {"a": {"agent": "x"}}))
    assert record.state is RunState.FAILED
    assert record.error == "step 'a' failed: TimeoutError: the database did not answer"
