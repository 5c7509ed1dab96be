"""`make bench`: every pattern through agp-mesh beside the same pattern over raw pyzmq."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from bench import suite
    from bench.progress import Progress
    from bench.report import RESULTS_DIR, Report

    ap = argparse.ArgumentParser(prog="make bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    ap.add_argument("--profile", choices=["full", "quick", "tiny"], default=None)
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args(argv)
    profile = args.profile or ("quick" if args.quick else "full")
    security = ("off",) if profile == "tiny" else ("off", "on")
    mesh_security = security if profile == "tiny" else suite.MESH_SECURITY
    report = Report()
    progress = Progress(total=suite.count_runs(profile, security, mesh_security))
    suite.run_side_by_side(report, profile=profile, security=security,
                           mesh_security=mesh_security, progress=progress.step)
    suite.share_baselines(report)
    progress.done()
    report.message("security on = CURVE on every socket + ZAP + token at HELLO + RBAC per "
                   "message (cached); e2e = all that, and every payload sealed end to end "
                   "(requests, replies, sends, pub/sub batches, stream chunks through the "
                   "router; peer to peer a stream's CURVE session is itself end to end); raw "
                   "pyzmq has no e2e: its CURVE figure is the e2e rows' baseline.")
    report.print()
    print("\nfigures the benchmark issue asks for (this machine, this run):")
    for sec in mesh_security:
        for line in suite.check_targets(report, sec):
            print(line)
    paths = report.write(args.out)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
