"""A workflow process for the kill -9 test (run as a script, not collected by pytest).

``crash_worker.py start DIR`` starts the run and waits; ``crash_worker.py resume DIR RUN_ID``
resumes it and prints the final state as JSON (or ``{"conflict": ...}`` and exits 3 when
another process drives the run). Every step appends "name attempt" to DIR/steps.log when it
starts, so the test can count what ran; ``train`` blocks until DIR/marker exists, which is
where the test kills the first process. ``train`` may be retried once: the attempt a kill
interrupts counts against that budget.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mesh.workflow import (
    ArtifactStore,
    RunConflict,
    StepResult,
    StepSpec,
    WorkflowRunner,
    open_store,
)

SPEC = {"name": "crashy", "steps": {
    "collect": {"agent": "data_analyst", "params": {"dataset": "breast_cancer"}},
    "train": {"agent": "ml_trainer", "depends_on": ["collect"], "retries": 1, "backoff": 0},
    "deploy": {"agent": "inference_service", "depends_on": ["train"]},
}}
FEATURES = np.arange(100_000, dtype=np.float64)  # 800 kB: goes to the artifact store


def make_call_step(work: Path) -> Any:
    async def call_step(step: StepSpec, inputs: dict[str, Any], attempt: int,
                        avoid: set[str]) -> StepResult:
        with (work / "steps.log").open("a") as fh:
            fh.write(f"{step.name} {attempt}\n")
        if step.name == "collect":
            return StepResult({"features": FEATURES, "rows": 569}, "data_analyst/1")
        if step.name == "train":
            for _ in range(6000):  # at most 60 s
                if (work / "marker").exists():
                    break
                await asyncio.sleep(0.01)
            else:
                raise TimeoutError("the marker never appeared")
            features = inputs["collect"]["features"]
            return StepResult({"checksum": float(features.sum()),
                               "rows": inputs["collect"]["rows"]}, "ml_trainer/1")
        return StepResult({"deployed": inputs["train"]}, "inference_service/1")

    return call_step


async def main(mode: str, work: Path, run_id: str | None) -> int:
    with open_store(f"sqlite:///{work}/runs.db") as store:
        runner = WorkflowRunner(store, make_call_step(work),
                                artifact_store=ArtifactStore(work / "artifacts"))
        if mode == "start":
            run_id = await runner.start(SPEC)
        else:
            assert run_id is not None
            try:
                run_id = await runner.resume(run_id)
            except RunConflict as exc:
                print(json.dumps({"conflict": exc.message}), flush=True)
                return 3
        record = await runner.wait(run_id)
        print(json.dumps({"id": record.id, "state": record.state.value, "error": record.error,
                          "outputs": runner.outputs(record.id).get("deploy")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]),
                              sys.argv[3] if len(sys.argv) > 3 else None)))
