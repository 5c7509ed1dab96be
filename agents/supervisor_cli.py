"""``agp up``, ``agp down``, ``agp status``: a local mesh from one config file.

    agp up [--config mesh.toml] [--run-dir run] [--detach]
    agp down [--run-dir run] [--timeout 15]
    agp status [--run-dir run] [--json]

``up`` runs the supervisor in the foreground (Ctrl-C or SIGTERM stops the mesh, also while
it is still starting); with ``--detach`` it runs in the background and returns once the mesh
is up. It prints one JSON ready line on stdout (router endpoint, control plane URL) for
scripts and tests. It refuses while the run dir's supervisor lives; if that one died
(kill -9), it first stops what it had left running, which nothing supervises any more (their
output went to the dead supervisor), rather than start a second copy beside it and lose it
from the record. ``down`` works from the state file alone, so it also cleans up after a
supervisor that was killed: every recorded process that still runs (same pid *and* kernel
start time) gets SIGTERM, then SIGKILL after the timeout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from agents.supervisor_config import (
    load_config,
    read_state,
    same_process,
    state_path,
    write_state,
)
from mesh.errors import ConfigError, Error

LEFTOVER_GRACE = 15.0  # seconds a dead supervisor's children get to drain on the next up


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    if getattr(args, "config", None):
        return Path(load_config(args.config).run_dir)
    return Path(os.environ.get("AGP_RUN_DIR", "run"))


def _alive(entry: dict[str, Any]) -> bool:
    return same_process(int(entry.get("pid", -1)), entry.get("starttime"))


# ---------------------------------------------------------------------- up
def cmd_up(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    run_dir = Path(args.run_dir or config.run_dir)
    held = args.detach or _hold_run_dir(run_dir)  # (a detached one takes it itself)
    previous = read_state(run_dir)
    if not held and (previous is None or not _alive(previous.get("supervisor", {}))):
        print(f"agp up: another `agp up` is starting in {run_dir}", file=sys.stderr)
        return 1
    if previous is not None:
        sup = previous.get("supervisor", {})
        if _alive(sup):  # running, or still starting: either way the run dir is taken
            print(f"agp up: a mesh is already {previous.get('state', 'up')} in {run_dir} "
                  f"(supervisor pid {sup['pid']}); run `agp down --run-dir {run_dir}` first",
                  file=sys.stderr)
            return 1
        if not _stop_leftovers(run_dir, previous):
            return 1
    if args.detach:
        return _detach(args, run_dir)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from agents.supervisor import Supervisor

    sup = Supervisor(config, run_dir=run_dir, config_path=args.config)
    stop = threading.Event()  # (never set: a signal stops the supervisor through interrupt)
    # Ctrl-C or `agp down` also while it starts: waiting for the slowest agent's ready line
    # (a minute) would start the whole mesh only to stop it
    signal.signal(signal.SIGTERM, lambda *_: sup.interrupt())
    signal.signal(signal.SIGINT, lambda *_: sup.interrupt())
    try:
        summary = sup.up()
    except (Error, OSError) as exc:
        if sup.interrupted:
            print(f"agp up: stopped while the mesh was starting; everything it had started "
                  f"is stopped (logs in {sup.log_dir})", file=sys.stderr)
        else:
            print(f"agp up failed: {exc} (logs in {sup.log_dir})", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    print(f"mesh up: router {summary['router']}, control {summary['control'] or '(none)'}, "
          f"{len(summary['processes'])} processes; logs in {sup.log_dir}", file=sys.stderr,
          flush=True)
    try:
        sup.run(stop)
    finally:
        codes = sup.down()
        print(f"mesh down: {codes}", file=sys.stderr, flush=True)
    return 0


_run_dir_lock: list[Any] = []  # the open lock file, held for the life of this process


def _hold_run_dir(run_dir: Path) -> bool:
    """Take the run dir's lock for the life of this process; False if another process
    holds it. Two `agp up` at once would both see no live supervisor in the state file and
    start two meshes, the second overwriting the first's record."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / "supervisor.lock", "a+b")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    _run_dir_lock.append(f)
    return True


def _detach(args: argparse.Namespace, run_dir: Path) -> int:
    """Start ``agp up`` in its own session; relay its ready line; return."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agents.supervisor_cli", "up", "--run-dir", str(run_dir),
           "--log-level", args.log_level, *(["--config", args.config] if args.config else [])]
    with open(run_dir / "logs" / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line, or EOF if it failed
    proc.stdout.close()
    if not line.startswith(b"{"):
        print(f"agp up failed; see {run_dir / 'logs' / 'supervisor.log'}", file=sys.stderr)
        return 1
    sys.stdout.write(line.decode())
    return 0


# ---------------------------------------------------------------------- down
def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(entries: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    left = [e for e in entries if _alive(e)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [e for e in left if _alive(e)]
    return left


def _stop_recorded(entries: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """SIGTERM every recorded process that still runs (same pid *and* start time: never an
    unrelated process that got the pid since), SIGKILL those alive after ``timeout``.
    Returns those still alive after that."""
    procs = [p for p in entries if _alive(p)]
    for p in procs:
        _signal(int(p["pid"]), signal.SIGTERM)
    for p in _wait_gone(procs, timeout):
        print(f"{p['name']} (pid {p['pid']}) ignored SIGTERM; killing it", file=sys.stderr)
        _signal(int(p["pid"]), signal.SIGKILL)
    return _wait_gone(procs, 5.0)


def _stop_leftovers(run_dir: Path, state: dict[str, Any]) -> bool:
    """The run dir's supervisor is dead: stop what it started that still runs, and mark the
    state file stopped. False (with the reason said) if any of them would not stop."""
    left = [p for p in state.get("processes", []) if _alive(p)]
    if not left:
        return True
    pid = state.get("supervisor", {}).get("pid")
    print(f"agp up: the previous supervisor (pid {pid}) is not running; stopping what it "
          f"left running: " + ", ".join(f"{p['name']} (pid {p['pid']})" for p in left),
          file=sys.stderr, flush=True)
    still = _stop_recorded(left, LEFTOVER_GRACE)
    write_state(run_dir, {**state, "state": "stopped"})
    if still:
        print("agp up: could not stop " + ", ".join(f"{p['name']} (pid {p['pid']})"
                                                    for p in still)
              + "; not starting a second mesh beside them", file=sys.stderr)
        return False
    print(f"agp up: stopped {len(left)} processes it left", file=sys.stderr, flush=True)
    return True


def cmd_down(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    state = read_state(run_dir)
    if state is None:
        print(f"no mesh state in {state_path(run_dir)}; nothing to stop", file=sys.stderr)
        return 0
    sup = state.get("supervisor", {})
    if _alive(sup):  # it stops its children in order (agents drain first)
        _signal(int(sup["pid"]), signal.SIGTERM)
        if _wait_gone([sup], args.timeout + 20):
            _signal(int(sup["pid"]), signal.SIGKILL)
    # whatever is left (the supervisor was killed, or a child ignored it): by pid, checked
    left = _stop_recorded(state.get("processes", []), args.timeout)
    # in the state file, nothing runs any more
    state["state"] = "stopped"
    write_state(run_dir, state)
    print(f"mesh down: {len(state.get('processes', []))} processes stopped"
          + (f", {len(left)} still alive" if left else ""), file=sys.stderr)
    return 1 if left else 0


# ---------------------------------------------------------------------- status
def _load(control: str) -> dict[str, dict[str, Any]]:
    """Per-service load from the control plane (empty when it does not answer)."""
    if not control:
        return {}
    try:
        with urllib.request.urlopen(control + "/api/status", timeout=2) as r:  # noqa: S310
            status = json.load(r)
    except (OSError, ValueError):
        return {}
    return {s["service"]: s for s in status.get("services", [])}


def status_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    load = _load(state.get("control", {}).get("url", ""))
    rows = []
    for p in state.get("processes", []):
        svc = load.get(p.get("service") or "", {})
        rows.append({**p, "alive": _alive(p),
                     "load": (f"{svc.get('inflight', 0)}/{svc.get('capacity', 0)} q"
                              f"{svc.get('queued', 0)}" if svc else "")})
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    state = read_state(run_dir)
    if state is None:
        print(f"no mesh in {run_dir} (no {state_path(run_dir).name})", file=sys.stderr)
        return 1
    sup = state.get("supervisor", {})
    running = state.get("state") == "running" and _alive(sup)
    rows = status_rows(state)
    said = state.get("state", "?")
    gone = not running and said in ("running", "starting")  # the record outlived its writer
    if args.json:
        print(json.dumps({**state, "running": running, "processes": rows,
                          **({"state": "down", "recorded_state": said} if gone else {})},
                         indent=2))
        return 0 if running else 3
    if gone:
        said = f"down (the supervisor recorded {said!r} but is gone; `agp up` cleans up)"
    print(f"mesh: {'up' if running else said}   supervisor pid "
          f"{sup.get('pid')}   router {state.get('router', {}).get('endpoint', '')}   "
          f"control {state.get('control', {}).get('url', '') or '-'}")
    header = ("NAME", "ROLE", "SERVICE", "PID", "ALIVE", "RESTARTS", "RECOVERY", "LOAD")
    table = [header] + [(r["name"], r["role"], r.get("service") or "-", str(r["pid"]),
                         "yes" if r["alive"] else "NO", str(r.get("restarts", 0)),
                         f"{r['last_recovery_s']:.2f}s" if r.get("last_recovery_s") else "-",
                         r["load"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0 if running else 3


# ---------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agp", description="run a local mesh from a config")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start router, control plane, registry and agents")
    up.add_argument("--config", default=None, help="mesh.toml (see configs/mesh.toml)")
    up.add_argument("--run-dir", default=None, help="state and logs (default: config's run_dir)")
    up.add_argument("--detach", action="store_true", help="run in the background")
    up.add_argument("--log-level", default="INFO")
    down = sub.add_parser("down", help="stop everything `agp up` started")
    down.add_argument("--run-dir", default=None)
    down.add_argument("--config", default=None)
    down.add_argument("--timeout", type=float, default=15.0, help="SIGTERM grace, seconds")
    st = sub.add_parser("status", help="processes, restarts and load")
    st.add_argument("--run-dir", default=None)
    st.add_argument("--config", default=None)
    st.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)
    except ConfigError as exc:
        print(f"agp {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
