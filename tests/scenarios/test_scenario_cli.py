"""`agp workflow` as a user types it, against the shared mesh."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def agp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def test_workflow_run_status_and_errors(endpoint: str, store_url: str, tmp_path: Path) -> None:
    run = agp("workflow", "run", "examples/workflows/ml_pipeline.toml", "--endpoint", endpoint,
              "--store", store_url)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "deployment: deployed random_forest v" in run.stdout
    assert "circuit breakers: " in run.stdout
    run_id = re.search(r"run ([0-9a-f]{32}) succeeded", run.stdout).group(1)
    assert "training" in run.stdout  # the live display named every step

    status = agp("workflow", "status", run_id[:8], "--store", store_url, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["run"] == run_id
    assert [s["state"] for s in doc["steps"]] == ["succeeded"] * 5
    assert doc["steps"][2]["instance"].startswith("test/scn/ml_trainer/")
    listing = agp("workflow", "status", "--store", store_url)
    assert run_id in listing.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[steps.a]\nagent = "data_analyst"\ndepends_on = ["b"]\n'
                   '[steps.b]\nagent = "data_analyst"\ndepends_on = ["a"]\n')
    refused = agp("workflow", "run", str(bad), "--endpoint", endpoint, "--store", store_url)
    assert refused.returncode == 2
    assert "cycle" in refused.stderr
    assert agp("workflow", "cancel", "f" * 32, "--store", store_url).returncode == 2
    assert agp("workflow", "cancel", run_id, "--store", store_url).returncode == 1  # finished
