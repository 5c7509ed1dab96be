"""Rounds: the latency scenarios repeat, each round beside its baseline, and the report shows
each figure's median round. The combining is fed dicts; the suite's wiring runs on fake
scenarios (no processes) so the order of runs and the figures that land can be checked."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from bench import baselines as b
from bench import mesh_scenarios as ms
from bench import suite
from bench.report import Report
from bench.rounds import median_of_rounds


def _lat(p99: float, lost: int = 0) -> dict[str, Any]:
    return {"corrected": {"count": 100.0, "p50_ms": p99 / 2, "p99_ms": p99, "max_ms": p99 * 2},
            "lost": lost, "label": "x"}


def test_each_number_is_its_median_round_counts_add_and_maxima_are_the_largest() -> None:
    out = median_of_rounds([_lat(3.0, lost=1), _lat(1.0), _lat(2.0, lost=2)])
    assert out["corrected"]["p99_ms"] == 2.0
    assert out["corrected"]["p50_ms"] == 1.0
    assert out["corrected"]["max_ms"] == 6.0  # the largest seen, not a median
    assert out["corrected"]["count"] == 300.0  # samples of all rounds
    assert out["lost"] == 3  # a request lost in any round is lost
    assert out["label"] == "x"


def test_failed_rounds_are_left_out_and_all_failed_is_a_failure() -> None:
    assert median_of_rounds([{"error": "E: down"}, _lat(4.0)])["corrected"]["p99_ms"] == 4.0
    assert median_of_rounds([{"error": "E: down"}, {"error": "F"}]) == {"error": "E: down"}
    with pytest.raises(ValueError):
        median_of_rounds([])


def _fake_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scenario, raw and agp-mesh, answers at once; sequential p99s count up per run."""
    seq = itertools.count(1)
    gbs = itertools.count(1)  # GB/s of each direct stream run, counting up
    lat = {"count": 10.0, "p50_ms": 0.1, "p95_ms": 0.2, "p99_ms": 0.3, "p99_9_ms": 0.4,
           "max_ms": 0.5}

    def sequential(**kw: Any) -> dict[str, Any]:
        return {**lat, "p99_ms": float(next(seq)), "p99_9_ms": 99.0, "max_ms": 99.0}

    for mod in (b, ms):
        monkeypatch.setattr(mod, "reqrep_sequential", sequential)
        monkeypatch.setattr(mod, "reqrep_inflight", lambda **kw: {**lat, "req_per_s": 5e4})
        monkeypatch.setattr(mod, "reqrep_open_loop", lambda **kw: {"corrected": lat, "lost": 0})
        monkeypatch.setattr(mod, "fire_and_forget",
                            lambda **kw: {"delivered_per_s": 1e5, "lost": 0})
        monkeypatch.setattr(mod, "pubsub", lambda **kw: {
            "delivered_per_s": 1e6, "drop_pct": 0.0, "unaccounted": 0})
        monkeypatch.setattr(mod, "stream", lambda **kw: {  # raw's peer to peer: relay=False
            "gb_per_s": float(next(gbs)) if kw.get("direct", kw.get("relay") is False)
            else 2.0, "direct": True})
    monkeypatch.setitem(b.PROFILES, "three", b.Profile(
        count=10, duration=0.1, rates=(1000.0,), subscribers=(1,), malloc_variants=False,
        rounds=3))


def test_latency_rounds_alternate_with_their_baselines_and_report_the_median(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scenarios(monkeypatch)
    report, labels = Report(), []
    both = suite.run_side_by_side(report, profile="three", progress=labels.append)
    raw = report.baseline_label
    seq = [lab for lab in labels if ": sequential " in lab]
    assert seq[:6] == [f"{raw}: sequential [security off] (round 1/3)",
                       "agp-mesh: sequential [security off] (round 1/3)",
                       f"{raw}: sequential [security on] (round 1/3)",
                       "agp-mesh: sequential [security on] (round 1/3)",
                       "agp-mesh: sequential [security e2e] (round 1/3)",
                       f"{raw}: sequential [security off] (round 2/3)"]
    assert len(seq) == 15
    assert len(labels) == suite.count_runs("three", ("off", "on"), suite.MESH_SECURITY)
    assert not [lab for lab in labels if "in flight" in lab and "round" in lab]  # once
    # agp-mesh "on" ran 4th, 9th and 14th: p99s 4, 9, 14 -> 9; its baseline 3, 8, 13 -> 8
    assert both["agp-mesh"]["sequential [security on]"]["p99_ms"] == 9.0
    assert both["raw"]["sequential [security on]"]["p99_ms"] == 8.0
    row = {(r.scenario, r.security): r for r in report.rows}[("sequential p99", "on")]
    assert (row.value, row.baseline) == (9.0, 8.0)
    assert any(m.startswith("sequential: p99 (ms) of each round:") and "agp-mesh on 4 / 9 / 14"
               in m for m in report.messages)
    assert len([k for k in report.raw if "sequential [security on] (round" in k]) == 6
    # the peer-to-peer stream too: raw off, mesh off, raw on, mesh on, mesh e2e per round,
    # so agp-mesh "on" streamed 4, 9 and 14 GB/s -> 9, beside its baseline's 8
    assert len([lab for lab in labels if "direct 1 MiB [" in lab and "round" in lab]) == 15
    streamed = {(r.scenario, r.security): r for r in report.rows}[("direct 1 MiB", "on")]
    assert (streamed.value, streamed.baseline) == (9.0, 8.0)
    assert any(m.startswith("stream direct 1 MiB: GB/s of each round:")
               and "agp-mesh on 4 / 9 / 14" in m for m in report.messages)
