"""Scenario 2 from a script: live ticks -> analysis -> prediction -> alerts, measured.

Against a running mesh (router plus data_analyst, ml_trainer and notification agents)::

    AGP_ROUTER=tcp://127.0.0.1:7700 python examples/streaming_example.py --rate 5000

or ``--local`` to start a throw-away local mesh first. The pipeline is the seed's
(``examples/workflows/streaming_pipeline.toml`` shape); ``--pipeline FILE`` takes another.
It prints tick-to-prediction and tick-to-alert latency (p50/p99) and the alert count, and
exits 1 (saying why on stderr) if the run did not settle or a stage died or lost messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ is None and "agents" not in sys.modules:  # a checkout without `make install`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.local_mesh import LocalMesh  # noqa: E402
from agents.scenario_report import format_streaming, streaming_problems  # noqa: E402
from agents.scenarios import SEED_PIPELINE, run_streaming_scenario  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default=os.environ.get("AGP_ROUTER"))
    p.add_argument("--local", action="store_true", help="start a local mesh for the run")
    p.add_argument("--pipeline", default=None, help="a .toml/.json pipeline (default: seed's)")
    p.add_argument("--rate", type=float, default=None, help="ticks per second (max 50000)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of ticks")
    p.add_argument("--batch-ms", type=float, default=2.0, help="source batching interval")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args()

    mesh = LocalMesh(Path(tempfile.mkdtemp(prefix="agp-streaming-"))) if args.local else None
    endpoint = mesh.start().endpoint if mesh is not None else args.endpoint
    try:
        result = asyncio.run(run_streaming_scenario(
            endpoint, pipeline=args.pipeline or SEED_PIPELINE, rate=args.rate,
            duration=args.duration, batch_ms=args.batch_ms))
    finally:
        if mesh is not None:
            mesh.stop()
    print(json.dumps(result, default=str, indent=2) if args.json else format_streaming(result))
    problems = streaming_problems(result)  # a run that lost messages is no success
    for line in problems:
        print(f"streaming_example: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
