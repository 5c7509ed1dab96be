"""The scenarios' results for a terminal and for an exit code: results in, text out (no
mesh, no I/O), so ``agp demo``, ``agp workflow run`` and the examples print them alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

DRAIN_S: Final = 10.0  # how long a streaming run waits for its stages to settle


def format_ml(result: Mapping[str, Any]) -> str:
    """Scenario 1's outcome for a terminal."""
    lines = [f"run {result['run']} {result['state']} in {result['wall_s']:.2f}s"
             + (f": {result['error']}" if result.get("error") else "")]
    for s in result["steps"]:
        took = f"{s['duration']:.2f}s" if s["duration"] is not None else "-"
        lines.append(f"  {s['name']:<16} {s['state']:<10} try {s['attempt']}  {took:>7}  "
                     f"{s['instance'] or ''}")
    if result.get("metrics"):
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items()
                            if k != "n_samples")
        lines.append(f"model {result.get('model')}: {metrics} "
                     f"(on {result['metrics'].get('n_samples')} held-out rows)")
    if result.get("deployed"):
        d = result["deployed"]
        lines.append(f"deployed {d['name']} v{d['version']} on {d['instance']}")
    if result.get("serving"):
        s = result["serving"]
        lat = s["latency_ms"]
        lines.append(f"served {s['requests']} single-row predictions in {s['wall_s']:.2f}s "
                     f"({s['per_s']:.0f}/s) in {s['batches']} micro-batches "
                     f"(mean {s['mean_batch']:.1f} rows); latency p50 {lat['p50']:.2f} ms, "
                     f"p99 {lat['p99']:.2f} ms; agreement with labels {s['agreement']:.3f}")
    if result.get("breakers"):
        lines.append("circuit breakers: " + ", ".join(
            f"{k}={v}" for k, v in result["breakers"].items()))
    return "\n".join(lines)


def streaming_problems(result: Mapping[str, Any]) -> list[str]:
    """Why a streaming run is not a success (empty if it is): it did not settle, or a
    stage's worker died, refused messages, failed to publish, dropped some or would not
    stop. What a command's exit code and stderr report."""
    stages = result.get("stages", {})
    out = [] if stages.get("settled") else [
        f"the pipeline did not settle within {DRAIN_S:g}s: some stage had not taken in, "
        "or had not finished, all its upstream published"]
    for name, c in stages.items():
        if not isinstance(c, Mapping):
            continue
        if "error" in c:
            out.append(f"stage {name}: could not be stopped: {c['error']}")
        if c.get("worker") == "dead":
            out.append(f"stage {name}: its worker died ({c.get('died')})")
        for key, what in (("refused", "refused"), ("publish_failed", "failed to publish"),
                          ("drop_reasons", "dropped")):
            if c.get(key):
                out.append(f"stage {name}: {what} {sum(c[key].values())} "
                           f"({', '.join(f'{k} {v}' for k, v in sorted(c[key].items()))})")
    return out


def format_streaming(result: Mapping[str, Any]) -> str:
    """Scenario 2's outcome for a terminal."""
    a, p = result["alert_latency_ms"], result["prediction_latency_ms"]
    lines = [
        f"{result['ticks']} ticks of {len(result['symbols'])} symbols in "
        f"{result['feed_s']:.2f}s ({result['achieved_rate']:.0f}/s, target "
        f"{result['rate']:.0f}/s), first stage fed by "
        f"{'a stream' if result['first_stage_pattern'] == 'streaming' else 'pub/sub'}",
        f"tick -> prediction latency: p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms "
        f"({p['n']} ticks)",
        f"alerts: {result['alerts']} {result['alert_kinds']}; tick -> alert latency: "
        f"p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms, max {a['max']:.2f} ms",
    ]
    fs = result.get("first_stage", {})
    if "ticks" in fs:
        lines.append(f"  stage {fs['name']:<11} (stream) ticks {fs['ticks']:>6}  batches "
                     f"{fs['batches']:>5}  published {fs['published']:>6}  on {fs['instance']}")
    for name, c in result["stages"].items():
        if isinstance(c, Mapping) and "processed" in c:
            lines.append(f"  stage {name:<11} received {c['received']:>6}  batches "
                         f"{c['batches']:>5}  published {c['published']:>6}  dropped "
                         f"{c['dropped']}  errors {c['errors']}  gaps {c['gaps']}")
    return "\n".join(lines)
