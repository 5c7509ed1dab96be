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
    for sec in ("off", "on"):
        assert results[f"sequential [security {sec}]"]["p50_ms"] > 0
        assert results[f"20 in flight [security {sec}]"]["req_per_s"] > 0
        assert results[f"fire-and-forget [security {sec}]"]["lost"] == 0
        assert results[f"pub/sub 2 subscribers [security {sec}]"]["delivered"] > 0
        assert results[f"stream relay 1 MiB [security {sec}]"]["gb_per_s"] > 0
    run_suite(report, profile="tiny", security=("off",))
    rows = {(r.pattern, r.scenario) for r in report.rows if r.value and r.baseline}
    assert ("request-response", "sequential p50") in rows
    assert ("streaming", "relay 1 MiB") in rows
    lines = suite.check_targets(report, "off")
    assert len(lines) == len(suite.TARGETS)
    written = report.write(tmp_path)
    assert written["json"].exists()
    assert written["md"].read_text().count("|") > 10
