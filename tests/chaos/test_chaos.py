"""The short chaos soak (``bench.chaos --short``): faults under fixed-rate traffic, and
nothing lost without being counted. Asserts accounting invariants and generous bounds,
never speed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.chaos import SHORT, run_chaos

pytestmark = pytest.mark.chaos


def _zombie_children(ppid: int) -> list[int]:
    """Pids in state Z whose parent is ``ppid`` (from /proc/<pid>/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        if fields[0] == "Z" and int(fields[1]) == ppid:
            found.append(int(entry))
    return found


def test_chaos_short_soak_accounts_for_everything(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    res = run_chaos(seed=7, out=out, work_dir=tmp_path / "work", **SHORT)

    assert res["ok"], res["error"]
    assert res["stalled"] is None
    assert json.loads(out.read_text())["loss_table"] == res["loss_table"]
    assert all(n >= 1 for n in res["faults_by_kind"].values()), res["faults_by_kind"]

    # accounting: every request ended with a reply or an explicit error, once
    rows = {r["stream"]: r for r in res["loss_table"]}
    req = rows["requests"]
    assert req["sent"] > 0
    assert req["sent"] == req["ok"] + req["errors"], req
    assert req["vanished"] == 0
    assert req["duplicates"] == 0
    assert req["unaccounted"] == 0
    # every message delivered once, or its loss counted
    for name in ("sub-steady", "sub-slow"):
        r = rows[name]
        assert r["duplicates"] == 0, r
        assert r["unaccounted"] == 0, r
        assert r["balance_ok"], r
        assert r["delivered"] > 0, r
    assert res["unaccounted_total"] == 0
    assert res["duplicates_total"] == 0

    # availability and the seed's targets: detection < 5 s, agent recovery < 30 s
    assert res["availability"] >= 0.5, res["availability"]
    assert res["detection_s"]
    assert all(d is not None and d < 5.0 for d in res["detection_s"])
    assert all(r is not None and r < 30.0 for r in res["agent_recovery_s"])
    assert all(r is not None and r < 30.0 for r in res["router_recovery_s"])

    # slow consumer: only the paused subscriber loses to back-pressure, and it knows
    slow = res["slow_consumer"]
    assert slow["learned_of_gap"], slow
    assert slow["steady_subscriber_counted_drops"] == 0, slow
    steady = rows["sub-steady"]
    assert steady["own_queue_dropped"] == 0, steady
    # what the steady one missed died with a killed router, and the mesh counted it
    assert steady["drops_counted_where_missing"] == steady["counted_lost_in_transit"], steady
    assert res["publisher"]["max_publish_call_s"] < 1.0, res["publisher"]  # never blocks
    assert res["publisher"]["close_s"] < 6.0
    assert res["client_close_s"] is not None
    assert res["client_close_s"] < 6.0

    # memory bounded on every process still running at the end
    for name, v in res["rss"].items():
        if v["start_mib"] and v["end_mib"]:
            assert v["end_mib"] - v["start_mib"] < 256, (name, v)

    # hygiene: every child reaped
    assert _zombie_children(os.getpid()) == []
