"""The agp-mesh half of the suite: run each scenario and put its figure in the report."""

from __future__ import annotations

from typing import Any

from bench import mesh_scenarios as ms
from bench.baselines import FAF, PROFILES, PS, RR, ST, Profile


def steps(p: Profile) -> list[tuple[str, Any, Any]]:
    """(name, run() -> dict, emit(report, result)) for every agp-mesh scenario (security off)."""
    d = p.duration
    out: list[tuple[str, Any, Any]] = [
        ("sequential", lambda: ms.reqrep_sequential(count=p.count),
         lambda rep, r: rep.add_latency(RR, "sequential", summary=r, security="off")),
        (f"{p.inflight} in flight",
         lambda: ms.reqrep_inflight(duration=d, inflight=p.inflight),
         lambda rep, r: (rep.add(RR, f"{p.inflight} in flight", r["req_per_s"], "req/s"),
                         rep.add_latency(RR, f"{p.inflight} in flight", summary=r))),
    ]
    for rate in p.rates:
        out.append((f"open loop {rate:.0f}/s",
                    lambda rate=rate: ms.reqrep_open_loop(rate=rate, duration=d),
                    lambda rep, r, rate=rate: rep.add_latency(
                        RR, f"open loop {rate:.0f}/s", summary=r["corrected"],
                        note=f"lost {r['lost']}" if r["lost"] else "")))
    out.append(("fire-and-forget", lambda: ms.fire_and_forget(duration=d),
                lambda rep, r: rep.add(FAF, "throughput", r["delivered_per_s"], "msg/s",
                                       note=f"lost {r['lost']}" if r["lost"] else "")))
    for n in p.subscribers:
        label = f"{n} subscriber{'s' if n > 1 else ''}"
        out.append((f"pub/sub {label}", lambda n=n: ms.pubsub(subscribers=n, duration=d),
                    lambda rep, r, label=label: (
                        rep.add(PS, f"{label}, delivered", r["delivered_per_s"], "msg/s",
                                note=f"unaccounted {r['unaccounted']}"),
                        rep.add(PS, f"{label}, dropped", r["drop_pct"], "%"))))
    for tuned in (True, False):
        name = "relay 1 MiB" + ("" if tuned else ", default malloc")
        out.append((f"stream {name}",
                    lambda tuned=tuned: ms.stream(duration=d, malloc_tuned=tuned),
                    lambda rep, r, name=name: rep.add(ST, name, r["gb_per_s"], "GB/s",
                                                      note="through the router")))
    return out


def run(report: Any, *, profile: str = "full", progress: Any = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, fn, emit in steps(PROFILES[profile]):
        if progress is not None:
            progress(f"agp-mesh: {name}")
        try:
            r = fn()
        except Exception as e:  # one broken scenario must not hide the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            report.message(f"agp-mesh {name} failed: {type(e).__name__}: {e}")
            continue
        results[name] = r
        report.add_raw(f"agp-mesh/{name}", r)
        emit(report, r)
    return results


TARGETS = [
    # (pattern, scenario, unit, comparison, figure, what the issue asks)
    (RR, "100 in flight", "req/s", ">=", 25_000, "request-response with requests in flight"),
    (RR, "sequential p50", "ms", "<", 0.5, "sequential p50"),
    (RR, "sequential p99", "ms", "<", 1.0, "sequential p99"),
    (RR, "open loop 10000/s p99", "ms", "<", 2.0, "p99 at an offered 10,000 req/s"),
    (PS, "1 subscriber, delivered", "msg/s", ">=", 500_000, "pub/sub to one subscriber"),
    (ST, "relay 1 MiB", "GB/s", ">=", 1.5, "streaming"),
]


def check_targets(report: Any) -> list[str]:
    """One line per figure the benchmark issue names: met or missed, and by how much."""
    lines = []
    rows = {(r.pattern, r.scenario, r.unit, r.security): r for r in report.rows}
    for pattern, scenario, unit, op, figure, what in TARGETS:
        row = rows.get((pattern, scenario, unit, "off"))
        if row is None or row.value is None:
            lines.append(f"  ?    {what}: not measured")
            continue
        ok = row.value >= figure if op == ">=" else row.value < figure
        ratio = f", {row.ratio:.2f}x raw" if row.ratio else ""
        lines.append(f"  {'met ' if ok else 'MISS'} {what}: {row.value:,.3g} {unit} "
                     f"(target {op} {figure:,} {unit}{ratio})")
    return lines
