"""The agp-mesh half of the suite: run each scenario and put its figure in the report."""

from __future__ import annotations

from typing import Any

from bench import mesh_scenarios as ms
from bench.baselines import FAF, PROFILES, PS, RR, ST, Profile, run_one, step_modes
from bench.baselines import baseline_steps as raw_baseline_steps
from bench.rounds import median_of_rounds

MESH_SECURITY = ALL_MODES = ("off", "on", "e2e")  # e2e: on, and payloads sealed end to end


def steps(p: Profile) -> list[tuple[str, Any, Any]]:
    """(name, run(secure) -> dict, emit(report, result, security)) for every scenario."""
    d = p.duration
    out: list[tuple[str, Any, Any]] = [
        ("sequential", lambda s: ms.reqrep_sequential(count=p.count, secure=s),
         lambda rep, r, sec: rep.add_latency(RR, "sequential", summary=r, security=sec)),
        (f"{p.inflight} in flight",
         lambda s: ms.reqrep_inflight(duration=d, inflight=p.inflight, secure=s),
         lambda rep, r, sec: (
             rep.add(RR, f"{p.inflight} in flight", r["req_per_s"], "req/s", security=sec),
             rep.add_latency(RR, f"{p.inflight} in flight", summary=r, security=sec))),
    ]
    for rate in p.rates:
        out.append((f"open loop {rate:.0f}/s",
                    lambda s, rate=rate: ms.reqrep_open_loop(
                        rate=rate, duration=p.open_loop_duration, secure=s),
                    lambda rep, r, sec, rate=rate: rep.add_latency(
                        RR, f"open loop {rate:.0f}/s", summary=r["corrected"], security=sec,
                        note=f"lost {r['lost']}" if r["lost"] else "")))
    out.append(("fire-and-forget", lambda s: ms.fire_and_forget(duration=d, secure=s),
                lambda rep, r, sec: rep.add(FAF, "throughput", r["delivered_per_s"], "msg/s",
                                            security=sec,
                                            note=f"lost {r['lost']}" if r["lost"] else "")))
    for n in p.subscribers:
        label = f"{n} subscriber{'s' if n > 1 else ''}"
        out.append((f"pub/sub {label}",
                    lambda s, n=n: ms.pubsub(subscribers=n, duration=d, secure=s),
                    lambda rep, r, sec, label=label: (
                        rep.add(PS, f"{label}, delivered", r["delivered_per_s"], "msg/s",
                                security=sec, note=f"unaccounted {r['unaccounted']}"),
                        rep.add(PS, f"{label}, dropped", r["drop_pct"], "%", security=sec))))
    variants = [(True, True), (False, True)]  # (direct, malloc tuned)
    if p.malloc_variants:
        variants.append((False, False))
    for direct, tuned in variants:
        name = ("direct" if direct else "relay") + " 1 MiB" + ("" if tuned else
                                                               ", default malloc")
        out.append((f"stream {name}",
                    lambda s, direct=direct, tuned=tuned: ms.stream(
                        duration=d, malloc_tuned=tuned, secure=s, direct=direct),
                    lambda rep, r, sec, name=name, direct=direct: rep.add(
                        ST, name, r["gb_per_s"], "GB/s", security=sec,
                        note=_path_note(direct, r)),
                    ALL_MODES if tuned else ("off",)))  # malloc's effect: once is enough
    return out


_DIRECT_STREAM = "stream direct 1 MiB"  # the stream step the targets judge


def _path_note(asked_direct: bool, r: dict[str, Any]) -> str:
    if not asked_direct:
        return "through the router"
    return "peer to peer, opened via the router" if r.get("direct") else "FELL BACK to router"




def _round_figure(step_name: str) -> tuple[str, str] | None:
    """The figure a step's rounds are told apart by (key, label), for the steps that run
    in rounds: the latency ones (a tail percentile is the VM's moment as much as the
    code's) and the peer-to-peer stream (its figure is this VM's CURVE speed of the moment:
    raw pyzmq's own ran 0.95-1.7 GB/s within a day). None: the step runs once."""
    if step_name == _DIRECT_STREAM:
        return "gb_per_s", "GB/s"
    if step_name == "sequential" or step_name.startswith("open loop"):
        return "p99_ms", "p99 (ms)"
    return None


def rounds_of(p: Profile, step_name: str) -> int:
    """How many times a step runs: ``p.rounds`` times, each round beside its baseline, for
    the steps :func:`_round_figure` names; the others once."""
    return p.rounds if _round_figure(step_name) else 1


def _sides(p: Profile, security: tuple[str, ...], mesh_security: tuple[str, ...]
           ) -> list[tuple[Any, list[tuple[str, Any, str]]]]:
    """Per agp-mesh step, in run order: (step, its runs as (side, step, mode)), each mode's
    raw baseline right before agp-mesh's run; then the raw steps with no agp-mesh twin."""
    raw_steps = {step[0]: step for step in raw_baseline_steps(p)}
    out = []
    for step in steps(p):
        twin = raw_steps.pop(step[0].removeprefix("stream "), None)
        runs = []
        for sec in ALL_MODES:
            if twin is not None and sec in step_modes(twin, security):
                runs.append(("raw", twin, sec))
            if sec in step_modes(step, mesh_security):
                runs.append(("agp-mesh", step, sec))
        out.append((step, runs))
    out += [(step, [("raw", step, sec) for sec in step_modes(step, security)])
            for step in raw_steps.values()]
    return out


def count_runs(profile: str, security: tuple[str, ...], mesh_security: tuple[str, ...]
               ) -> int:
    """How many scenario runs :func:`run_side_by_side` makes (for the progress display)."""
    p = PROFILES[profile]
    return sum(len(runs) * rounds_of(p, step[0])
               for step, runs in _sides(p, security, mesh_security))


def run_side_by_side(report: Any, *, profile: str = "full",
                     security: tuple[str, ...] = ("off", "on"),
                     mesh_security: tuple[str, ...] = MESH_SECURITY,
                     progress: Any = None) -> dict[str, Any]:
    """Every scenario over raw pyzmq and through agp-mesh back to back, security mode by
    security mode (raw off, mesh off, raw on, mesh on, mesh e2e): this machine's speed
    wanders by up to 2x within minutes, so a figure and its baseline are taken in the same
    few seconds, not half a run apart. The latency scenarios and the peer-to-peer stream
    repeat that ``rounds`` times and report each figure's median round
    (:mod:`bench.rounds`). Raw steps with no agp-mesh twin run at the end. Returns
    ``{"agp-mesh": {...}, "raw": {...}}``, each keyed ``"<step> [security <s>]"``."""
    p = PROFILES[profile]
    out: dict[str, dict[str, Any]] = {"agp-mesh": {}, "raw": {}}
    label = {"agp-mesh": "agp-mesh", "raw": report.baseline_label}
    for step, runs in _sides(p, security, mesh_security):
        n, figure = rounds_of(p, step[0]), _round_figure(step[0])
        got: list[list[dict[str, Any]]] = [[] for _ in runs]
        for k in range(n):
            tag = f" (round {k + 1}/{n})" if n > 1 else ""
            for i, (side, st, sec) in enumerate(runs):
                got[i].append(run_one(report, st, sec, label=label[side], progress=progress,
                                      tag=tag))
        for (side, st, sec), rounds in zip(runs, got, strict=True):
            r = out[side][f"{st[0]} [security {sec}]"] = median_of_rounds(rounds)
            if "error" not in r:
                st[2](report, r, sec)
        if figure and n > 1:
            report.message(_each_round(step[0], figure, runs, got, label))
    return out


def _each_round(name: str, figure: tuple[str, str], runs: list[tuple[str, Any, str]],
                got: list[list[dict[str, Any]]], label: dict[str, str]) -> str:
    """One line: every round's ``figure`` (p99, a stream's GB/s), per side and mode: the
    spread behind a median."""
    key, what = figure
    parts = []
    for (side, _, sec), rounds in zip(runs, got, strict=True):
        values = [r.get("corrected", r).get(key) for r in rounds if "error" not in r]
        parts.append(f"{label[side]} {sec} " + " / ".join(f"{v:.3g}" for v in values if v))
    return f"{name}: {what} of each round: " + "; ".join(parts)


TARGETS = [
    # (pattern, scenario, unit, comparison, figure, what the issue asks, security modes)
    (RR, "100 in flight", "req/s", ">=", 25_000, "request-response with requests in flight",
     ("on", "e2e")),
    (RR, "sequential p50", "ms", "<", 0.5, "sequential p50", ("on", "e2e")),
    (RR, "sequential p99", "ms", "<", 1.0, "sequential p99", ("on", "e2e")),
    (RR, "open loop 10000/s p99", "ms", "<", 2.0, "p99 at an offered 10,000 req/s",
     ("on", "e2e")),
    (PS, "1 subscriber, delivered", "msg/s", ">=", 500_000, "pub/sub to one subscriber",
     ("on", "e2e")),
    (ST, "direct 1 MiB", "GB/s", ">=", 1.5, "streaming without end-to-end sealing", ("on",)),
    (ST, "direct 1 MiB", "GB/s", ">=", 1.0, "streaming with end-to-end sealing", ("e2e",)),
]


def share_baselines(report: Any) -> None:
    """Raw pyzmq has no end-to-end sealing: an "e2e" row's limit is the CURVE baseline."""
    on = {(r.pattern, r.scenario, r.unit): r.baseline for r in report.rows
          if r.security == "on" and r.baseline is not None}
    for r in report.rows:
        if r.security == "e2e" and r.baseline is None:
            r.baseline = on.get((r.pattern, r.scenario, r.unit))


def check_targets(report: Any, security: str = "on") -> list[str]:
    """One line per figure the benchmark issue names: the figure against its target, and
    against raw pyzmq in the same run (at least half its throughput, at most twice its
    latency); met only when both hold, and a miss says by how much."""
    lines = []
    rows = {(r.pattern, r.scenario, r.unit, r.security): r for r in report.rows}
    for pattern, scenario, unit, op, figure, what, modes in TARGETS:
        if security not in modes:
            continue
        row = rows.get((pattern, scenario, unit, security))
        if row is None or row.value is None:
            lines.append(f"  ?    {what} (security {security}): not measured")
            continue
        higher_is_better = op == ">="
        ok = row.value >= figure if higher_is_better else row.value < figure
        miss = abs(row.value / figure - 1)
        verdict = "" if ok else f", missed by {miss:.0%}" if miss >= 0.01 else (
            f", missed by {miss:.1%}")
        ratio = row.ratio
        if ratio is None:
            ratio_ok, vs_raw = True, ""
        else:
            ratio_ok = ratio >= 0.5 if higher_is_better else ratio <= 2.0
            bound = "at least 0.5x" if higher_is_better else "at most 2x"
            vs_raw = (f"; raw pyzmq {row.baseline:,.3g}: {ratio:.2f}x ({bound}"
                      f"{'' if ratio_ok else ': MISSED'})")
        lines.append(f"  {'met ' if ok and ratio_ok else 'MISS'} {what} (security {security}): "
                     f"{_shown(row.value, figure)} {unit} (target {op} {figure:,} {unit}"
                     f"{verdict}{vs_raw})")
    return lines


def _shown(value: float, figure: float) -> str:
    """``value`` to three significant digits, or as many more (up to six) as it takes not
    to read as its target (1.4969 GB/s against 1.5 is not "1.5", met or missed)."""
    for digits in range(3, 7):
        text = f"{value:,.{digits}g}"
        if float(text.replace(",", "")) != figure:
            return text
    return text


def peers_hook(report: Any, p: Any) -> None:
    """agp-mesh's figures for ``make bench-peers``, under the rows gRPC and Redis fill:
    security off beside gRPC without TLS, on (CURVE, tokens, RBAC) beside gRPC over TLS."""
    for sec, secure in (("off", False), ("on", True)):
        seq = ms.reqrep_sequential(count=p.count, secure=secure)
        report.add_latency(RR, "unary sequential", summary=seq, security=sec)
        inflight = ms.reqrep_inflight(duration=p.duration, inflight=p.inflight, secure=secure)
        label = f"unary {p.inflight} in flight"
        report.add(RR, label, inflight["req_per_s"], "req/s", security=sec)
        report.add_latency(RR, label, summary=inflight, security=sec)
        report.add(ST, "server stream 1 MiB",
                   ms.stream(duration=p.duration, secure=secure, direct=True)["gb_per_s"],
                   "GB/s", security=sec, note="agp-mesh: peer to peer")
    ps = ms.pubsub(subscribers=1, duration=p.duration, secure=True)
    report.add(PS, "1 subscriber, delivered", ps["delivered_per_s"], "msg/s",
               note="agp-mesh: security on; Redis: no TLS, no ACL")
    report.add(PS, "1 subscriber, dropped", ps["drop_pct"], "%")
