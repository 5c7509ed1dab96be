"""A tiny run of every agp-mesh bench scenario: the bench code itself cannot rot.

Asserts the shape of the results (keys, positive figures, rows beside their baselines),
never speed.
"""

from __future__ import annotations

from bench import suite
from bench.report import Report


def test_every_mesh_scenario_runs_and_lands_beside_its_baseline(tmp_path) -> None:
    report = Report()
    labels: list[str] = []
    both = suite.run_side_by_side(report, profile="tiny", progress=labels.append)
    results, raw = both["agp-mesh"], both["raw"]
    assert not [k for k, v in results.items() if "error" in v], results
    assert not [k for k, v in raw.items() if "error" in v], raw
    # each figure is taken right after its baseline, mode by mode
    at = labels.index(f"{report.baseline_label}: sequential [security on]")
    assert labels[at + 1] == "agp-mesh: sequential [security on]"
    assert labels[at + 2] == "agp-mesh: sequential [security e2e]"
    for sec in ("off", "on", "e2e"):
        assert results[f"sequential [security {sec}]"]["p50_ms"] > 0
        assert results[f"20 in flight [security {sec}]"]["req_per_s"] > 0
        assert results[f"fire-and-forget [security {sec}]"]["lost"] == 0
        assert results[f"pub/sub 2 subscribers [security {sec}]"]["delivered"] > 0
        assert results[f"stream relay 1 MiB [security {sec}]"]["gb_per_s"] > 0
        assert results[f"stream relay 1 MiB [security {sec}]"]["direct"] is False
        assert results[f"stream direct 1 MiB [security {sec}]"]["direct"] is True
    suite.share_baselines(report)
    rows = {(r.pattern, r.scenario, r.security) for r in report.rows if r.value and r.baseline}
    assert ("request-response", "sequential p50", "off") in rows
    assert ("streaming", "relay 1 MiB", "on") in rows
    assert ("streaming", "direct 1 MiB", "e2e") in rows  # the CURVE baseline, shared
    for sec in ("on", "e2e"):
        lines = suite.check_targets(report, sec)
        assert len(lines) == sum(sec in t[-1] for t in suite.TARGETS)
    written = report.write(tmp_path)
    assert written["json"].exists()
    assert written["md"].read_text().count("|") > 10


def test_the_bench_home_is_removed_when_the_process_that_made_it_exits() -> None:
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-c", "from bench import mesh_system as ms; "
         "home = ms.secure_env(True)['AGP_HOME']; "
         "import os; assert os.path.isdir(home); print(home)"],
        capture_output=True, text=True, timeout=60, check=True)
    home = Path(out.stdout.strip())
    assert home.name.startswith("agp-bench-home-")
    assert not home.exists()  # gone with its process: runs leave no keys in /tmp
