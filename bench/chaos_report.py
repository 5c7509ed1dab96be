"""What a chaos run found: the figures, the loss table and the memory, from what its sides
wrote (``bench.chaos`` runs it), and their printout.

``analyse`` proves the accounting: requests ``sent == ok + errors``; per subscriber every
missing run of sequence numbers explained by a drop its client counted; nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.chaos_procs import Chaos, StallDetector


def _pct(a: np.ndarray, q: float) -> float | None:
    return float(np.percentile(a, q)) if len(a) else None


def analyse(c: Chaos, sides: dict[str, Any], faults: list[dict[str, Any]],
             windows: list[tuple[float, float]], run_error: str | None,
             stall: StallDetector | None, rss_end: dict[str, Any],
             close_s: float | None) -> dict[str, Any]:
    res: dict[str, Any] = {"ok": run_error is None, "error": run_error,
                           "stalled": stall.stalled if stall else None,
                           "max_still_s": stall.max_still if stall else {}}
    req = sides.get("requester") or {}
    pubr = sides.get("publisher") or {}
    # ------------------------------------------------------------- requests
    rows: list[dict[str, Any]] = []
    fault_span = (min(f["_t0"] for f in faults), max(f["_t1"] for f in faults)) \
        if faults else None
    if req:
        z = np.load(c.out / "requester.npz")
        send_t, end_t, outcome = z["send_t"], z["end_t"], z["outcome"]
        lat = (end_t - send_t) * 1000.0
        okm = outcome == 1
        rows.append({"stream": "requests", "sent": req["sent"], "ok": req["ok"],
                     "errors": req["errors"], "error_types": req["error_types"],
                     "duplicates": req["duplicates"], "vanished": req["vanished"],
                     "unaccounted": req["sent"] - req["ok"] - req["errors"]})
        res["requests"] = {"sent": req["sent"], "planned": req["planned"],
                           "achieved_rate": req["achieved_rate"],
                           "availability_overall": req["ok"] / max(1, req["sent"]),
                           "p50_ms": _pct(lat[okm], 50), "p99_ms": _pct(lat[okm], 99),
                           "late_replies": req["client_counters"].get("late_replies", 0)}
        if fault_span:
            inw = (send_t >= fault_span[0]) & (send_t <= fault_span[1])
            res["availability"] = float(okm[inw].sum() / max(1, inw.sum()))
            res["requests_during_faults"] = int(inw.sum())
            res["p99_ms_during_faults"] = _pct(lat[inw & okm], 99)
            res["p50_ms_during_faults"] = _pct(lat[inw & okm], 50)
        for f in faults:
            # service recovery seen by the traffic: first request sent after the fault that
            # succeeded, until its reply
            after = okm & (send_t >= f["_t0"])
            f["traffic_recover_s"] = float(end_t[after].min() - f["_t0"]) if after.any() \
                else None
            f["errors_caused"] = int(((outcome == 2) & (send_t >= f["_t0"] - c.req_timeout)
                                      & (send_t <= f["_t1"])).sum())
    # ------------------------------------------------------------- messages
    published = int(pubr.get("published", 0))
    for name in ("sub-steady", "sub-slow"):
        s = sides.get(name)
        if not s or not pubr:
            rows.append({"stream": name, "missing_results": True, "unaccounted": None})
            continue
        z = np.load(c.out / f"{name}.npz")
        got, marks = z["got"][:published], z["marks"]
        mark_at: dict[int, int] = {}
        for seq, n in marks.tolist():
            mark_at[int(seq)] = mark_at.get(int(seq), 0) + int(n)
        miss = ~got
        edges = np.flatnonzero(np.diff(np.concatenate(([0], miss.astype(np.int8), [0]))))
        runs = edges.reshape(-1, 2)
        counted = unaccounted = overcount = 0
        for a, b in runs.tolist():
            n = b - a
            g = mark_at.pop(b, 0) if b < published else mark_at.pop(len(z["got"]), 0)
            use = min(g, n)
            counted += use
            overcount += g - use
            unaccounted += n - use  # the mesh counts what dies with a router too now
        overcount += sum(mark_at.values())  # drops counted where nothing is missing
        delivered = int(got.sum())
        rows.append({"stream": name, "published": published, "delivered": delivered,
                     "duplicates": s["duplicates"] + s["out_of_range"],
                     "counted_gaps": s["gaps"], "own_queue_dropped": s["dropped"],
                     "counted_lost_in_transit": s.get("lost", 0),
                     "drops_counted_where_missing": counted,
                     "publisher_dropped": pubr.get("publish_dropped", 0),
                     "overcounted": overcount, "unaccounted": unaccounted,
                     "balance_ok": published == delivered + counted + unaccounted})
    res["loss_table"] = rows
    res["unaccounted_total"] = sum(int(r["unaccounted"] or 0) for r in rows) + sum(
        1 for r in rows if r.get("missing_results"))
    res["duplicates_total"] = sum(int(r.get("duplicates", 0)) for r in rows)
    if pubr:
        res["publisher"] = {k: pubr[k] for k in ("published", "planned", "achieved_rate",
                                                 "max_publish_call_s", "publish_dropped",
                                                 "close_s")}
    slow = next((r for r in rows if r["stream"] == "sub-slow"), {})
    steady = next((r for r in rows if r["stream"] == "sub-steady"), {})
    res["slow_consumer"] = {
        "paused_subscriber_counted_drops": slow.get("counted_gaps", 0)
        + slow.get("own_queue_dropped", 0),
        "learned_of_gap": (slow.get("counted_gaps", 0) + slow.get("own_queue_dropped", 0)) > 0,
        "steady_subscriber_counted_drops": steady.get("counted_gaps", 0)
        + steady.get("own_queue_dropped", 0),
        "publisher_max_call_s": pubr.get("max_publish_call_s")}
    res["faults"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in f.items()
                      if not k.startswith("_")} for f in faults]
    kills = [f for f in faults if f["kind"] == "kill_agent"]
    routers = [f for f in faults if f["kind"] == "restart_router"]
    res["detection_s"] = [f.get("detect_s") for f in kills]
    res["agent_recovery_s"] = [f.get("recover_s") for f in kills]
    res["router_recovery_s"] = [f.get("recover_s") for f in routers]
    res["faults_by_kind"] = {k: sum(1 for f in faults if f["kind"] == k)
                             for k in ("kill_agent", "restart_router", "pause_subscriber")}
    res["rss"] = {}
    for name, v in c.rss_start.items():
        end = rss_end.get(name, {}).get("rss")
        side = sides.get(name) or {}
        res["rss"][name] = {"start_mib": _mib(v["rss"]), "end_mib": _mib(end),
                            "peak_mib": _mib(side.get("max_rss")),
                            "note": None if end else ("exited" if side else "killed")}
    res["client_close_s"] = close_s
    return res


def _mib(v: int | None) -> float | None:
    return round(v / 1048576, 1) if v else None


def print_report(res: dict[str, Any], log: Callable[[str], None]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    log("")
    log(f"chaos: {'OK' if res['ok'] else 'FAILED: ' + str(res['error'])}"
        f"  (faults {res.get('faults_by_kind')})")
    log(f"  availability during faults : {fmt(res.get('availability'))}")
    log(f"  p99 latency during faults  : {fmt(res.get('p99_ms_during_faults'))} ms")
    log(f"  detection of agent kills   : {[fmt(x) for x in res['detection_s']]} s")
    log(f"  agent recovery             : {[fmt(x) for x in res['agent_recovery_s']]} s")
    log(f"  router recovery            : {[fmt(x) for x in res['router_recovery_s']]} s")
    log(f"  slow consumer              : {res['slow_consumer']}")
    log("  loss table:")
    for r in res["loss_table"]:
        log("    " + "  ".join(f"{k}={v}" for k, v in r.items()))
    log(f"  unaccounted total          : {res['unaccounted_total']}")
    log("  RSS MiB start -> end:")
    for name, v in res["rss"].items():
        log(f"    {name:<16} {fmt(v['start_mib'])} -> {fmt(v['end_mib'])}"
            f"  peak {fmt(v['peak_mib'])}  {v['note'] or ''}")
