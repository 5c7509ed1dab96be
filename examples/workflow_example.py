"""Scenario 1 from a script: the seed's ML workflow on a running mesh, then predictions.

Start a mesh (router and the agents), then run this::

    agp router --insecure &
    for a in data_analyst ml_trainer ml_trainer inference_service; do
        agp agent $a --insecure & done
    python examples/workflow_example.py            # AGP_ROUTER or tcp://127.0.0.1:7700

or ``--local`` to start a throw-away local mesh first. The run is durable: its state is in
``--store``; if this script dies, ``agp workflow resume RUN`` finishes it without re-running
the steps that were done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

if __package__ is None and "agents" not in sys.modules:  # a checkout without `make install`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.local_mesh import LocalMesh  # noqa: E402
from agents.orchestrator import run_workflow  # noqa: E402
from mesh import Mesh  # noqa: E402
from mesh.workflow import ProgressDisplay  # noqa: E402

# The seed's workflow, as the product brief writes it, with each step's params added.
WORKFLOW = {
    "data_collection": {"agent": "data_analyst", "timeout": 300,
                        "params": {"dataset": "breast_cancer"}},
    "preprocessing": {"agent": "data_analyst", "depends_on": ["data_collection"],
                      "params": {"test_size": 0.25, "random_state": 7}},
    "training": {"agent": "ml_trainer", "depends_on": ["preprocessing"], "retries": 1,
                 "params": {"model": "gradient_boosting", "hyperparams": {"n_estimators": 50}}},
    "evaluation": {"agent": "ml_trainer", "depends_on": ["training"]},
    "deployment": {"agent": "inference_service", "depends_on": ["evaluation"],
                   "params": {"min_metrics": {"accuracy": 0.9}}},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default=os.environ.get("AGP_ROUTER"))
    p.add_argument("--store", default="sqlite:///run/workflows.db")
    p.add_argument("--local", action="store_true", help="start a local mesh for the run")
    args = p.parse_args()

    mesh = LocalMesh(Path(tempfile.mkdtemp(prefix="agp-workflow-"))) if args.local else None
    endpoint = mesh.start().endpoint if mesh is not None else args.endpoint
    try:
        result = asyncio.run(run_workflow(WORKFLOW, endpoint, args.store,
                                          on_event=ProgressDisplay()))
        if not result.succeeded:
            print(f"run {result.record.id} {result.record.state.value}: {result.record.error}")
            return 1
        evaluation, deployment = result.outputs["evaluation"], result.outputs["deployment"]
        print(f"\nmodel {evaluation['model']}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in evaluation["metrics"].items() if k != "n_samples"))
        print(f"deployed {deployment['name']} v{deployment['version']} on "
              f"{deployment['instance']}")

        # The deployed model now serves: single rows are micro-batched by the service.
        dataset = result.outputs["data_collection"]
        with Mesh.connect(endpoint) as m:
            for i in range(5):
                reply = m.request(deployment["instance"], "predict",
                                  {"name": deployment["name"], "row": dataset["X"][i]})
                print(f"row {i}: predicted {reply['prediction']} (label {dataset['y'][i]}), "
                      f"P={reply['probabilities'].round(3).tolist()} from v{reply['version']}")
        return 0
    finally:
        if mesh is not None:
            mesh.stop()


if __name__ == "__main__":
    raise SystemExit(main())
