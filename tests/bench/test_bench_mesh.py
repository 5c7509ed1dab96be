"""A tiny run of every agp-mesh bench scenario: the bench code itself cannot rot.

Asserts the shape of the results (keys, positive figures, rows beside their baselines),
never speed.
"""

from __future__ import annotations

from bench import suite
from bench.baselines import run_suite
from bench.report import Report


def test_every_mesh_scenario_runs_and_lands_beside_its_baseline(tmp_path) -> None:
    report = Report()
    results = suite.run(report, profile="tiny")
    assert not [k for k, v in results.items() if "error" in v], results
    assert results["sequential"]["p50_ms"] > 0
    assert results["20 in flight"]["req_per_s"] > 0
    assert results["fire-and-forget"]["lost"] == 0
    ps = results["pub/sub 2 subscribers"]
    assert ps["delivered"] > 0
    assert results["stream relay 1 MiB"]["gb_per_s"] > 0
    run_suite(report, profile="tiny", security=("off",))
    rows = {(r.pattern, r.scenario) for r in report.rows if r.value and r.baseline}
    assert ("request-response", "sequential p50") in rows
    assert ("streaming", "relay 1 MiB") in rows
    lines = suite.check_targets(report)
    assert len(lines) == len(suite.TARGETS)
    written = report.write(tmp_path)
    assert written["json"].exists()
    assert written["md"].read_text().count("|") > 10
