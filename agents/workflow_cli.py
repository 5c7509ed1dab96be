"""``agp workflow``: run, watch, cancel, resume and prune durable workflows from a terminal.

    agp workflow run FILE [--endpoint E] [--store sqlite:///run/workflows.db] [--json]
    agp workflow status [RUN] [--store URL] [--service] [--json]
    agp workflow cancel RUN [--store URL]
    agp workflow resume RUN [--endpoint E] [--store URL] [--force]
    agp workflow prune --older-than AGE [--keep N] [--orphans] [--dry-run] [--store URL]

``run`` drives the workflow from this process with a live progress display; its state is in
the store, so after a crash (or SIGTERM, which detaches) ``resume`` continues it without
re-running finished steps. Ctrl-C cancels the run. ``cancel`` works from any process: it
marks the run cancelled in the store and whoever drives it stops its steps. A streaming
pipeline file (stages with a ``source``) is driven for ``--duration`` seconds instead; it
fails (exit 1, reasons on stderr) if it did not settle or a stage died or lost messages.
Exit codes: 0 succeeded, 1 failed or cancelled, 2 bad usage or spec, 143 detached (SIGTERM,
or ``--timeout`` ran out: the run is left resumable). ``--artifacts`` defaults to
``AGP_ARTIFACTS``, as for the orchestrator service, so either resumes the other's runs.
``prune`` deletes finished runs (with their steps and the artifacts no kept run points at)
that ended more than AGE (``90s``, ``30m``, ``12h``, ``7d``, ``2w``) ago, except each
workflow's N most recent; never a running (resumable) run, nor one whose lease is held.
With ``--orphans`` it also deletes the blobs no run left in the store points at (a step's
output whose commit a crash lost, a run deleted by other means) once untouched for AGE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from agents.orchestrator import (
    DEFAULT_STORE,
    ORCHESTRATOR_SERVICE,
    artifacts_dir_for,
    cancel_in_store,
    run_status,
    run_workflow,
)
from mesh.argtypes import int_in
from mesh.errors import ConfigError, Error
from mesh.workflow import (
    ArtifactError,
    ArtifactStore,
    PipelineSpec,
    ProgressDisplay,
    RunNotFound,
    RunState,
    WorkflowSpecError,
    load_document,
    open_store,
    render_table,
)
from mesh.workflow.lease import stamp

AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agp workflow", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store = os.environ.get("AGP_WORKFLOW_STORE", DEFAULT_STORE)
    # as the orchestrator service reads them: a run one of them started and the other
    # resumes must find its finished steps' artifacts (else the run fails on resume)
    artifacts = os.environ.get("AGP_ARTIFACTS") or None
    endpoint = os.environ.get("AGP_ROUTER")

    run = sub.add_parser("run", help="run a workflow (or a streaming pipeline) file")
    run.add_argument("file", help="a .toml or .json workflow or pipeline")
    for cmd in (run, sub.add_parser("resume", help="continue a run; done steps are kept")):
        cmd.add_argument("--endpoint", default=endpoint, help="router endpoint")
        cmd.add_argument("--store", default=store, help="run store URL")
        cmd.add_argument("--artifacts", default=artifacts,
                         help="artifact directory (default: $AGP_ARTIFACTS, else beside a "
                              "SQLite store)")
        cmd.add_argument("--timeout", type=float, default=None,
                         help="stop waiting after this many seconds (the run stays resumable)")
        cmd.add_argument("--json", action="store_true", help="print the final status as JSON")
    run.add_argument("--duration", type=float, default=10.0, help="pipelines: seconds of ticks")
    run.add_argument("--rate", type=float, default=None, help="pipelines: ticks per second")
    sub.choices["resume"].add_argument("run", help="run id (or a unique prefix)")
    sub.choices["resume"].add_argument(
        "--force", action="store_true",
        help="take over a run whose driver may be alive (a live process on this host, or "
             "one on another host before its lease runs out): only once that process is "
             "known gone, or two would drive it")

    status = sub.add_parser("status", help="one run's steps, or the recent runs")
    status.add_argument("run", nargs="?", help="run id (or a unique prefix)")
    status.add_argument("--store", default=store)
    status.add_argument("--service", action="store_true",
                        help="ask the orchestrator service (shows its circuit breakers)")
    status.add_argument("--endpoint", default=endpoint)
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=20)

    cancel = sub.add_parser("cancel", help="cancel a run, whichever process drives it")
    cancel.add_argument("run")
    cancel.add_argument("--store", default=store)

    prune = sub.add_parser("prune", help="delete finished runs older than an age, and the "
                                          "artifacts no kept run points at")
    prune.add_argument("--older-than", required=True, type=age, metavar="AGE",
                       help="runs that ended more than AGE ago: 90s, 30m, 12h, 7d, 2w")
    prune.add_argument("--keep", type=int_in(0, 10**9, "count"), default=0, metavar="N",
                       help="keep each workflow's N most recent finished runs, however old")
    prune.add_argument("--orphans", action="store_true",
                       help="also delete the blob files under the artifact directory that no "
                            "run left in the store points at (e.g. a step output written "
                            "before a crash lost its commit) and that were not written "
                            "or touched for AGE; other files, temp files and symlinks stay")
    prune.add_argument("--dry-run", action="store_true",
                       help="print what would be removed, remove nothing")
    prune.add_argument("--store", default=store)
    prune.add_argument("--artifacts", default=artifacts,
                       help="artifact directory (default: $AGP_ARTIFACTS, else beside a "
                            "SQLite store)")
    return p


def age(text: str) -> float:
    """An age in seconds from ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``. The unit is
    required: a bare ``7`` could mean days as well as seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    value = float(found[1]) * AGE_UNITS[found[2]] if found else math.nan
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "resume":
            return asyncio.run(_drive(None, args, resume=args.run))
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "prune":
            return _cmd_prune(args)
        record = asyncio.run(cancel_in_store(args.store, args.run))
        print(f"run {record.id} {record.state.value}")
        return 0 if record.state is RunState.CANCELLED else 1
    except WorkflowSpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Error as exc:
        print(f"agp workflow {args.command}: {exc}", file=sys.stderr)
        # (no such run is bad usage, whichever command names it)
        bad_usage = isinstance(exc, RunNotFound) or args.command in ("status", "cancel") or (
            args.command == "prune" and isinstance(exc, ConfigError))
        return 2 if bad_usage else 1


def _cmd_run(args: argparse.Namespace) -> int:
    doc = load_document(args.file)
    if isinstance(doc, PipelineSpec):
        from agents.scenario_report import format_streaming
        from agents.scenarios import run_streaming_scenario

        result = asyncio.run(run_streaming_scenario(args.endpoint, pipeline=doc, rate=args.rate,
                                                    duration=args.duration))
        print(json.dumps(result, default=str) if args.json else format_streaming(result))
        return _streaming_exit(result)
    return asyncio.run(_drive(doc, args))


def _streaming_exit(result: Mapping[str, Any]) -> int:
    """1, with each reason on stderr, when the streaming run did not settle or a stage
    died, refused, failed to publish or dropped messages; else 0."""
    from agents.scenario_report import streaming_problems

    problems = streaming_problems(result)
    for line in problems:
        print(f"agp workflow run: {line}", file=sys.stderr)
    return 1 if problems else 0


async def _drive(spec: Any, args: argparse.Namespace, resume: str | None = None) -> int:
    display = ProgressDisplay(sys.stderr if args.json else None)
    loop = asyncio.get_running_loop()
    run_ids: list[str] = []
    how = {"signal": ""}

    def on_progress(run_id: str, step: str, instance: str, fraction: float, msg: str) -> None:
        row = display.rows.get(step)
        if display.tty and row is not None:
            row.note = f"{fraction:.0%} {msg}"[:60]
            display.refresh()
        elif not display.tty:
            display.stream.write(f"          {step}  {fraction:4.0%}  {msg}\n")
            display.stream.flush()

    task = asyncio.ensure_future(run_workflow(
        spec, args.endpoint, args.store, artifacts_dir=args.artifacts, on_event=display,
        on_progress=on_progress, on_start=run_ids.append, resume=resume, timeout=args.timeout,
        force=bool(getattr(args, "force", False))))

    def interrupted() -> None:  # Ctrl-C: cancel the run (its steps stop on their agents)
        how["signal"] = "INT"
        if run_ids:
            loop.create_task(cancel_in_store(args.store, run_ids[0]))
        else:
            task.cancel()

    def terminated() -> None:  # SIGTERM: leave the run resumable
        how["signal"] = "TERM"
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, interrupted)
    loop.add_signal_handler(signal.SIGTERM, terminated)
    try:
        result = await task
    except (asyncio.CancelledError, asyncio.TimeoutError):
        if run_ids:
            print(f"run {run_ids[0]} left running; continue it with "
                  f"`agp workflow resume {run_ids[0]}`", file=sys.stderr)
        # SIGTERM or --timeout left the run detached, resumable: not failed. A Ctrl-C
        # before the run was recorded cancelled it (nothing ran)
        detached = how["signal"] == "TERM" or (how["signal"] == "" and bool(run_ids))
        return 143 if detached else 1
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
    if args.json:
        store = open_store(args.store)
        try:
            doc = run_status(store, result.record.id)
        finally:
            store.close()
        doc["breakers"] = result.breakers
        doc["outputs"] = {k: summarize(v) for k, v in result.outputs.items()}
        print(json.dumps(doc, default=str))
    else:
        print(render_table(result.steps.values(), ascii_only=display.ascii_only))
        for name, value in result.outputs.items():
            print(f"  {name}: {summarize(value)}")
        print("circuit breakers: " + ", ".join(f"{k}={v}" for k, v in result.breakers.items()))
        tail = f": {result.record.error}" if result.record.error else ""
        print(f"run {result.record.id} {result.record.state.value}{tail}")
    return 0 if result.succeeded else 1


def summarize(value: Any) -> str:
    """One line about a step's output: metrics, a deployment, a dataset's shape... An
    output of the user's own shape that only looks like one of these (a 1-D ``X``, metrics
    that are not numbers) gets its keys: a run that succeeded never ends in a traceback."""
    if not isinstance(value, Mapping):
        return type(value).__name__
    try:
        return _described(value)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return "keys " + ", ".join(sorted(map(str, value))[:8])


def _described(value: Mapping[str, Any]) -> str:
    if "version" in value and "versions" in value:
        return f"deployed {value.get('name')} v{value['version']} on {value.get('instance')}"
    if value.get("metrics") and "sha256" in value:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in value["metrics"].items())
        return f"model {value.get('model', value.get('name'))}: {metrics}"
    if "X" in value and hasattr(value["X"], "shape"):
        return f"dataset {value.get('source', '')} {value['X'].shape[0]} rows x " \
               f"{value['X'].shape[1]} features"
    if "X_train" in value and hasattr(value["X_train"], "shape"):
        return f"{value['X_train'].shape[0]} training rows, " \
               f"{value['X_test'].shape[0]} held out"
    if "sha256" in value:
        return f"model artifact {value.get('model', '')} ({len(value.get('bytes', b''))} bytes)"
    return "keys " + ", ".join(sorted(map(str, value))[:8])


def _cmd_status(args: argparse.Namespace) -> int:
    if args.service:
        from mesh import Mesh

        with Mesh.connect(args.endpoint) as m:
            doc = m.request(ORCHESTRATOR_SERVICE, "status",
                            {"run": args.run} if args.run else None, timeout=10)
        print(json.dumps(doc, default=str, indent=None if args.json else 2))
        return 0
    store = open_store(args.store)
    try:
        if args.run is None:
            runs = store.list_runs(limit=args.limit)
            if args.json:
                print(json.dumps([{"run": r.id, "name": r.name, "state": r.state.value,
                                   "error": r.error} for r in runs]))
            for r in [] if args.json else runs:
                print(f"{r.id}  {r.state.value:<10} {r.name}" + (f"  {r.error}" if r.error
                                                                  else ""))
            return 0
        doc = run_status(store, args.run)
        if args.json:
            print(json.dumps(doc, default=str))
        else:
            print(f"run {doc['run']} ({doc['name']}) {doc['state']}"
                  + (f": {doc['error']}" if doc["error"] else ""))
            ProgressDisplay().show(store.step_states(doc["run"]))
        return 0
    finally:
        store.close()


def _cmd_prune(args: argparse.Namespace) -> int:
    """Runs first, each batch one transaction; then the blobs only they pointed at (a
    prune killed in between leaves blobs behind, never a kept run pointing at none); with
    ``--orphans``, then every blob no run left points at. Blobs stored or touched since
    the cutoff stay: a running step may be about to record one."""
    cutoff = time.time() - args.older_than
    db = _sqlite_file(args.store)
    if db is not None and not db.is_file():  # (opening it would make an empty store)
        raise ConfigError(f"no run store at {db}")
    store = open_store(args.store)
    try:
        pruned = store.prune_runs(finished_before=cutoff, keep=args.keep, dry_run=args.dry_run)
        kept = store.artifact_refs(excluding={r.id for r in pruned.runs} if args.dry_run
                                   else ())
    finally:
        store.close()
    verb = "would remove" if args.dry_run else "removed"
    for run in pruned.runs:
        print(f"{verb} run {run.id}  {run.state.value:<10} {run.name}  "
              f"(ended {stamp(run.finished)})")
    root = Path(args.artifacts or artifacts_dir_for(args.store))
    (blobs, size), (orphans, orphan_size) = (0, 0), (0, 0)
    if root.is_dir():
        artifacts = ArtifactStore(root)
        blobs, size = _discard(artifacts, sorted(pruned.refs - kept), cutoff, args, "artifact")
        if args.orphans:  # (the pruned runs' own blobs were just dealt with, kept or not)
            stray = (uri for uri in artifacts.blobs(on_error=_scan_error)
                     if uri not in kept and uri not in pruned.refs)
            orphans, orphan_size = _discard(artifacts, stray, cutoff, args, "orphan artifact")
    print(f"{verb} {len(pruned.runs)} run(s) and {blobs} artifact(s), {size} bytes")
    if args.orphans:
        print(f"{verb} {orphans} orphan artifact(s), {orphan_size} bytes")
    return 0


def _discard(artifacts: ArtifactStore, uris: Iterable[str], cutoff: float,
             args: argparse.Namespace, what: str) -> tuple[int, int]:
    """Discard the blobs ``uris`` name (none touched since ``cutoff``), one line each;
    returns how many and their bytes. A blob that cannot go is kept and said on stderr."""
    verb = "would remove" if args.dry_run else "removed"
    count, size = 0, 0
    for uri in uris:
        try:
            freed = artifacts.discard(uri, untouched_since=cutoff, dry_run=args.dry_run)
        except (ArtifactError, OSError) as exc:
            print(f"agp workflow prune: kept {what} {uri}: {exc}", file=sys.stderr)
            continue
        if freed is not None:
            count, size = count + 1, size + freed
            print(f"{verb} {what} {uri} ({freed} bytes)")
    return count, size


def _scan_error(exc: OSError) -> None:
    print(f"agp workflow prune: cannot look for orphans in {exc.filename}: {exc.strerror}",
          file=sys.stderr)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (as :func:`open_store` reads it); None for others."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None if "://" in url or url == ":memory:" else Path(url)


if __name__ == "__main__":
    raise SystemExit(main())
