"""A streaming run that lost messages, or did not settle, exits non-zero and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agents.scenario_report import streaming_problems

ROOT = Path(__file__).resolve().parents[2]
# data_analyst as the last stage refuses every prediction it gets (they are not ticks)
BROKEN = """name = "broken"
[stages.data_stream]
source = "stock_api"
rate = "500/sec"
symbols = ["AAPL", "MSFT"]
[stages.analysis]
agent = "data_analyst"
pattern = "streaming"
window = 5
[stages.prediction]
agent = "ml_trainer"
[stages.alerts]
agent = "data_analyst"
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


def test_cli_streaming_exit_code_says_whether_the_run_lost_messages(endpoint: str,
                                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN)
    bad = _run("-m", "mesh.cli", "workflow", "run", str(broken), "--endpoint", endpoint,
               "--duration", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "stage alerts: refused" in bad.stderr
    assert "DataError" in bad.stderr
    good = _run("-m", "mesh.cli", "workflow", "run", "examples/workflows/streaming_pipeline.toml",
                "--endpoint", endpoint, "--duration", "1", "--rate", "500")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stderr == ""


def test_example_streaming_exit_code(endpoint: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN)
    bad = _run("examples/streaming_example.py", "--endpoint", endpoint, "--pipeline",
               str(broken), "--duration", "1")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "stage alerts: refused" in bad.stderr


def test_problems_name_an_unsettled_run_and_a_dead_or_lossy_stage() -> None:
    clean = {"received": 5, "processed": 5, "worker": "stopped", "refused": {},
             "publish_failed": {}, "drop_reasons": {}}
    assert streaming_problems({"stages": {"settled": True, "a": clean}}) == []
    problems = streaming_problems({"stages": {
        "settled": False,
        "a": {**clean, "worker": "dead", "died": "RuntimeError: boom"},
        "b": {**clean, "publish_failed": {"ConfigError": 2},
              "drop_reasons": {"queue_full": 3}},
        "c": {"error": "DEADLINE_EXCEEDED"}}})
    assert problems[0].startswith("the pipeline did not settle")
    assert "stage a: its worker died (RuntimeError: boom)" in problems
    assert "stage b: failed to publish 2 (ConfigError 2)" in problems
    assert "stage b: dropped 3 (queue_full 3)" in problems
    assert "stage c: could not be stopped: DEADLINE_EXCEEDED" in problems
