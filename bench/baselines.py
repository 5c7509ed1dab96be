"""Raw pyzmq baselines: every mesh pattern with no framework, the limit agp-mesh is held to,
and the suite that runs them (profiles, steps, the report rows they fill).

The sides live in ``bench.raw_reqrep`` (broker, worker, clients) and ``bench.raw_flow``
(pub/sub and streams), with what they share in ``bench.raw_common``. Each side runs in its
own process where the real thing would and is written as fast as pyzmq allows. Every
scenario takes a ``duration`` or ``count`` so a test can run it tiny, and ``secure=True``
turns CURVE on with a ZAP handler that allows only the client key, as the mesh runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from bench.raw_flow import pubsub, stream
from bench.raw_reqrep import fire_and_forget, reqrep_inflight, reqrep_open_loop, reqrep_sequential


# --------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class Profile:
    """How long each baseline runs: ``full`` for ``make bench``, ``quick``, ``tiny`` for tests."""

    count: int  # sequential requests
    duration: float  # seconds of every timed scenario
    rates: tuple[float, ...]  # open-loop offered rates, req/s
    subscribers: tuple[int, ...]
    inflight: int = 100
    malloc_variants: bool = True  # also measure streaming with glibc's default thresholds
    rounds: int = 1  # latency and peer-to-peer stream: runs beside their baselines (median)
    open_loop_s: float | None = None  # seconds of each open-loop round (default: duration)

    @property
    def open_loop_duration(self) -> float:
        return self.open_loop_s or self.duration


PROFILES: Final = {
    "full": Profile(count=5000, duration=3.0, rates=(5000.0, 10000.0), subscribers=(1, 10),
                    rounds=3, open_loop_s=2.0),
    "quick": Profile(count=2000, duration=0.8, rates=(10000.0,), subscribers=(1, 10),
                     malloc_variants=False),
    "tiny": Profile(count=200, duration=0.2, rates=(2000.0,), subscribers=(2,), inflight=20),
}

RR, FAF, PS, ST = "request-response", "fire-and-forget", "pub/sub", "streaming"


def scenario_names(profile: str = "full") -> list[str]:
    """Names of the suite's steps, in run order (one per baseline run, per security mode)."""
    return [name for name, _, _ in baseline_steps(PROFILES[profile])]


def baseline_steps(p: Profile) -> list[tuple[str, Any, Any]]:
    """(name, run(secure) -> dict, emit(report, result, security)) for every baseline."""
    d = p.duration
    steps: list[tuple[str, Any, Any]] = [
        (
            "sequential",
            lambda s: reqrep_sequential(count=p.count, secure=s),
            lambda rep, r, sec: rep.add_latency(RR, "sequential", baseline=r, security=sec),
        ),
        (
            f"{p.inflight} in flight",
            lambda s: reqrep_inflight(duration=d, inflight=p.inflight, secure=s),
            lambda rep, r, sec: (
                rep.add_baseline(RR, f"{p.inflight} in flight", r["req_per_s"], "req/s", sec),
                rep.add_latency(RR, f"{p.inflight} in flight", baseline=r, security=sec),
            ),
        ),
    ]
    for rate in p.rates:
        steps.append(
            (
                f"open loop {rate:.0f}/s",
                lambda s, rate=rate: reqrep_open_loop(rate=rate, duration=p.open_loop_duration,
                                                      secure=s),
                lambda rep, r, sec, rate=rate: rep.add_latency(
                    RR,
                    f"open loop {rate:.0f}/s",
                    baseline=r["corrected"],
                    security=sec,
                    note=f"lost {r['lost']}" if r["lost"] else "",
                ),  # fmt: skip
            )
        )
    steps.append(
        (
            "fire-and-forget",
            lambda s: fire_and_forget(duration=d, secure=s),
            lambda rep, r, sec: rep.add_baseline(
                FAF, "throughput", r["delivered_per_s"], "msg/s", sec
            ),
        )
    )
    for n in p.subscribers:
        label = f"{n} subscriber{'s' if n > 1 else ''}"
        steps.append(
            (
                f"pub/sub {label}",
                lambda s, n=n: pubsub(subscribers=n, duration=d, secure=s),
                lambda rep, r, sec, label=label: (
                    rep.add_baseline(PS, f"{label}, delivered", r["delivered_per_s"], "msg/s", sec),
                    rep.add_baseline(PS, f"{label}, dropped", r["drop_pct"], "%", sec),
                ),
            )
        )
    for relay in (False, True):
        for tuned in ((True, False) if p.malloc_variants else (True,)):
            name = f"{'relay' if relay else 'direct'} 1 MiB" + ("" if tuned else ", default malloc")
            steps.append(
                (
                    name,
                    lambda s, relay=relay, tuned=tuned: stream(
                        relay=relay, duration=d, malloc_tuned=tuned, secure=s
                    ),
                    lambda rep, r, sec, name=name: rep.add_baseline(
                        ST, name, r["gb_per_s"], "GB/s", sec
                    ),
                )
            )
    return steps


def run_suite(
    report: Any,
    *,
    profile: str = "full",
    security: tuple[str, ...] = ("off", "on"),
    progress: Any = None,
) -> dict[str, Any]:
    """Run every baseline and put its figures in ``report``'s baseline column.

    Rows (per security "off"/"on"), for the agp-mesh scenarios to fill with ``report.add``
    or ``report.add_latency`` under the same names: RR ``sequential`` (latency),
    ``100 in flight`` (req/s and latency), ``open loop 5000/s`` / ``10000/s`` (latency,
    corrected); FAF ``throughput`` (msg/s); PS ``1 subscriber, delivered`` /
    ``10 subscribers, delivered`` (msg/s) and ``..., dropped`` (%); ST ``direct 1 MiB``,
    ``relay 1 MiB`` and their ``, default malloc`` twins (GB/s).

    ``report`` is a :class:`bench.report.Report`; ``progress`` a callable taking a label
    (e.g. ``Progress.step``). A scenario that fails is noted in the report and the suite
    goes on. Returns ``{"<name> [security <s>]": result dict}``.
    """
    return run_steps(report, baseline_steps(PROFILES[profile]), security=security,
                     label=report.baseline_label, progress=progress)


SECURITY_MODES: Final[dict[str, Any]] = {"off": False, "on": True, "e2e": "e2e"}


def step_modes(step: tuple[Any, ...], security: tuple[str, ...]) -> tuple[str, ...]:
    """The security modes a step runs in: all asked for, or those it names (4th item)."""
    return security if len(step) < 4 else tuple(s for s in security if s in step[3])


def run_one(report: Any, step: tuple[Any, ...], sec: str, *, label: str,
            progress: Any = None, tag: str = "") -> dict[str, Any]:
    """Run ``step`` once in security mode ``sec``: its result dict (kept whole for the
    JSON), or ``{"error": ...}`` noted in the report: one broken scenario must not hide
    the others. ``tag`` names the round, if there are several."""
    key = f"{step[0]} [security {sec}]"
    if progress is not None:
        progress(f"{label}: {key}{tag}")
    try:
        r = step[1](SECURITY_MODES[sec])
    except Exception as e:
        report.message(f"{label} {key}{tag} failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    report.add_raw(f"{label}/{key}{tag}", r)
    return r


def run_steps(report: Any, steps: list[tuple[Any, ...]], *, security: tuple[str, ...],
              label: str, progress: Any = None) -> dict[str, Any]:
    """Run ``(name, run(secure) -> dict, emit(report, result, security)[, modes])`` steps,
    each in every security mode (off, on, e2e) side by side, or in the ``modes`` it names; a
    step that fails is noted and the rest go on."""
    results: dict[str, Any] = {}
    for step in steps:
        for sec in step_modes(step, security):
            r = results[f"{step[0]} [security {sec}]"] = run_one(
                report, step, sec, label=label, progress=progress)
            if "error" not in r:
                step[2](report, r, sec)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.baselines [--quick] [--security off,on] [--out DIR]``: raw only."""
    import argparse

    from bench.progress import Progress
    from bench.report import RESULTS_DIR, Report

    ap = argparse.ArgumentParser(prog="bench.baselines", description="raw pyzmq baselines")
    ap.add_argument("--quick", action="store_true", help="short runs")
    ap.add_argument("--security", default="off,on", help="comma list of off/on")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="output directory")
    args = ap.parse_args(argv)
    profile = "quick" if args.quick else "full"
    security = tuple(s for s in args.security.split(",") if s in ("off", "on"))
    rep = Report(title="raw pyzmq baselines")
    prog = Progress(total=len(scenario_names(profile)) * len(security))
    run_suite(rep, profile=profile, security=security, progress=prog.step)
    prog.done()
    rep.write(args.out, stem="baselines", plot="baselines-latency.png")
    rep.print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
