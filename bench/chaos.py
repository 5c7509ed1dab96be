"""Chaos and soak: fixed-rate traffic across a secure mesh while a monkey breaks it.

``python -m bench.chaos [--short]`` (or ``run_chaos(...)``) starts a secure router, N echo
agents serving ``chaos/mesh/echo``, two subscribers (one steady, one that gets paused), a
publisher and a requester (``bench.chaos_sides``), all separate processes on 127.0.0.1.
Traffic is paced open loop; every payload carries a sequence number. The echo calls are
marked idempotent (as a read would be), so the client retries them, up to three times
within their 5 s timeout, after an UNAVAILABLE from a killed agent or router.

The monkey (seeded) runs one fault at a time, every ``fault_interval`` seconds, cycling
through a shuffled order of: SIGKILL a random agent (measure detection: until
``agp/router services`` no longer lists it; then restart it and measure recovery: until it
answers again), restart the router (SIGKILL + start on the same endpoints; recovery: until a
request succeeds again), SIGSTOP the slow subscriber then SIGCONT it.

Accounting (as in nats-server's chaos tests): bitsets of sequence numbers at the receivers
prove nothing is answered or delivered twice; ``sent == ok + errors`` for requests;
``published == delivered + counted drops`` per subscriber, where each missing run of
sequence numbers must be explained by a drop the subscriber's mesh client counted: a router
sequence gap, its own queue's overflow, or ``lost`` (numbers its publisher skipped that no
router counted: messages that died with a killed router). Anything else is unaccounted.
A stall detector fails the run when no progress is made for 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.chaos_procs import NS, Chaos, StallDetector, read_json, rss_bytes
from bench.chaos_report import analyse, print_report
from bench.chaos_sides import SERVICE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "chaos.json"
STALL_S = 10.0
CLIENT = "chaos-client"

FULL = {"duration": 60.0, "req_rate": 10_000.0, "pub_rate": 20_000.0, "payload": 512,
        "pub_hwm": 2000, "sub_hwm": 2000}
SHORT = {"duration": 45.0, "req_rate": 300.0, "pub_rate": 2_000.0, "payload": 4096,
         "pub_hwm": 500, "sub_hwm": 500}


def _instances(m: Any) -> list[str]:
    for svc in m.request("agp/router", "services", timeout=2):
        if svc["service"] == SERVICE:
            return [i["name"] for i in svc["instances"]]
    return []


def _poll(cond: Callable[[], bool], timeout: float, abort: threading.Event,
          interval: float = 0.05) -> float | None:
    """Seconds until ``cond()`` held (None if not within ``timeout``); exceptions = False."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline and not abort.is_set():
        try:
            if cond():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - the mesh is being broken on purpose
            pass
        abort.wait(interval)
    return None


def run_chaos(duration: float = 60.0, req_rate: float = 10_000.0, pub_rate: float = 20_000.0,
              agents: int = 4, seed: int = 1, *, payload: int = 256,
              fault_interval: float = 4.0, pause_s: float = 4.0, pub_hwm: int = 2000,
              sub_hwm: int = 2000, req_timeout: float = 5.0, out: Path | None = RESULTS,
              work_dir: Path | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """One chaos run; returns (and writes to ``out``) the figures and the loss table."""
    from mesh import Mesh
    from security.home import enroll_identity, ensure_router, open_home

    if agents < 1:
        raise ValueError("agents >= 1")
    rng = random.Random(seed)
    work = Path(work_dir or tempfile.mkdtemp(prefix="agp-chaos-"))
    home = open_home(str(work / "home"))
    ensure_router(home)
    for i in range(agents):
        enroll_identity(home, f"chaos-agent{i}", roles=("agent",), namespace=NS)
    for name in (CLIENT, "chaos-requester", "chaos-publisher", "chaos-sub-steady",
                 "chaos-sub-slow"):
        enroll_identity(home, name, roles=("admin",))
    env = {"AGP_HOME": str(work / "home"), "AGP_MDNS": "0", "AGP_IDENTITY": ""}
    saved_env = {k: os.environ.get(k) for k in ("AGP_HOME", "AGP_MDNS")}
    os.environ["AGP_HOME"], os.environ["AGP_MDNS"] = env["AGP_HOME"], "0"

    c = Chaos(work, env, agents, pub_hwm, log)
    c.req_timeout = req_timeout
    abort = threading.Event()
    faults: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []  # router outage windows (kill, ready)
    paused: set[str] = set()
    stall: StallDetector | None = None
    m: Any = None
    sides: dict[str, Any] = {}
    rss_end: dict[str, dict[str, Any]] = {}
    run_error: str | None = None
    t_run0 = time.monotonic()
    try:
        c.start_router()
        for i in range(agents):
            c.start_agent(i)
        m = Mesh.connect(c.endpoint, identity=CLIENT, timeout=30)
        if _poll(lambda: len(_instances(m)) == agents, 30, abort) is None:
            raise RuntimeError("the agents did not all register")
        count = int(pub_rate * duration) + 1
        for name in ("sub-steady", "sub-slow"):
            c.start_side("subscriber", name, ["--expect", str(count), "--hwm", str(sub_hwm),
                                              "--duration", str(duration)])
        c.start_side("publisher", "publisher", ["--rate", str(pub_rate), "--duration",
                                                str(duration), "--payload", str(payload)])
        c.start_side("requester", "requester", ["--rate", str(req_rate), "--duration",
                                                str(duration), "--payload", "16",
                                                "--timeout", str(req_timeout),
                                                "--idempotent"])
        t_traffic = time.monotonic()
        stall = StallDetector(c.out, {"requester": "ok", "publisher": "published",
                                      "sub-steady": "received", "sub-slow": "received"},
                              STALL_S, lambda: set(paused))
        stall.start()
        log(f"chaos: traffic started: {req_rate:g} req/s, {pub_rate:g} msg/s for "
            f"{duration:g}s, {agents} agents, seed {seed}")

        kinds = ["kill_agent", "restart_router", "pause_subscriber"]
        order: list[str] = []
        t_next = t_traffic + min(3.0, duration / 6)
        quiet_tail = max(8.0, pause_s + 4.0)
        for _ in range(1000):  # bounded: one fault per slot
            if abort.wait(max(0.0, t_next - time.monotonic())):
                break
            if stall.stalled:
                raise RuntimeError(f"stall: {stall.stalled}")
            if time.monotonic() > t_traffic + duration - quiet_tail:
                break
            if not order:
                order = rng.sample(kinds, len(kinds))
            kind = order.pop()
            f: dict[str, Any] = {"kind": kind, "t": round(time.monotonic() - t_traffic, 3)}
            t0 = time.monotonic()
            f["_t0"] = t0
            if kind == "kill_agent":
                i = rng.randrange(agents)
                victim = c.agents[i]
                short = victim.ready_info.get("instance") or f"a{i}"
                f["agent"] = short
                victim.kill()
                victim.stop()
                f["detect_s"] = _poll(lambda short=short: short not in _instances(m), 15,
                                      abort)
                c.start_agent(i, gen=len(faults) + 1)
                f["restarted_s"] = time.monotonic() - t0
                f["recover_s"] = _poll(
                    lambda short=short: m.request(short, "whoami", timeout=2) is not None,
                    30, abort)
                if f["recover_s"] is not None:
                    f["recover_s"] += f["restarted_s"]
            elif kind == "restart_router":
                assert c.router is not None
                c.router.kill()
                c.router.stop()
                c.start_router()
                t_ready = time.monotonic()
                f["router_ready_s"] = t_ready - t0
                f["recover_s"] = _poll(
                    lambda: m.request(SERVICE, "echo", 1, timeout=2) == 1, 30, abort)
                f["all_agents_back_s"] = _poll(lambda: len(_instances(m)) == agents, 30,
                                               abort)
                windows.append((t0, t_ready))
            else:
                p = c.sides["sub-slow"]
                paused.add("sub-slow")
                p.signal(signal.SIGSTOP)
                abort.wait(pause_s)  # the fault's length, not a synchronisation
                p.signal(signal.SIGCONT)
                paused.discard("sub-slow")
                f["paused_s"] = time.monotonic() - t0
            f["_t1"] = time.monotonic()
            faults.append(f)
            log("chaos: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                        for k, v in f.items() if not k.startswith("_")}))
            t_next = max(t_next + fault_interval, time.monotonic() + 1.0)

        # traffic ends by itself; wait for the senders (bounded), then drain subscribers
        for name in ("publisher", "requester"):
            p = c.sides[name]
            left = t_traffic + duration + req_timeout + 60 - time.monotonic()
            assert p.proc is not None
            p.proc.wait(max(1.0, left))
            if stall.stalled:
                raise RuntimeError(f"stall: {stall.stalled}")
        pub_res = read_json(c.out / "publisher.json") or {}
        published = int(pub_res.get("published", 0))

        def drained() -> bool:
            for name in ("sub-steady", "sub-slow"):
                pr = read_json(c.out / f"{name}.progress.json") or {}
                if pr.get("received", 0) + pr.get("gaps", 0) + pr.get("dropped", 0) \
                        + pr.get("lost", 0) < published and time.monotonic() - pr.get("t", 0) < 2:
                    return False
            return True

        stable: dict[str, Any] = {}

        def quiet() -> bool:  # every subscriber has all, or received nothing new for 2 s
            if drained():
                return True
            now = time.monotonic()
            for name in ("sub-steady", "sub-slow"):
                val = (read_json(c.out / f"{name}.progress.json") or {}).get("received")
                if stable.get(name, (None,))[0] != val:
                    stable[name] = (val, now)
            return all(now - t > 2.0 for _, t in stable.values())

        _poll(quiet, 30, abort, interval=0.25)
        stall.stop()
        for p in c.procs:
            if p.alive():
                rss_end[p.name] = {"pid": p.pid, "rss": rss_bytes(p.pid)}
        for name in ("sub-steady", "sub-slow"):
            c.sides[name].stop(timeout=20)
    except Exception as exc:  # noqa: BLE001 - reported, and the run still cleans up
        run_error = f"{type(exc).__name__}: {exc}"
        log(f"chaos: run failed: {run_error}")
    finally:
        abort.set()
        if stall is not None:
            stall.stop()
        if m is not None:
            t = time.monotonic()
            m.close()
            close_s = time.monotonic() - t
        else:
            close_s = None
        c.reap_all()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    for name in ("requester", "publisher", "sub-steady", "sub-slow"):
        sides[name] = read_json(c.out / f"{name}.json")
    res = analyse(c, sides, faults, windows, run_error, stall, rss_end, close_s)
    res["config"] = {"duration": duration, "req_rate": req_rate, "pub_rate": pub_rate,
                     "agents": agents, "seed": seed, "payload": payload,
                     "fault_interval": fault_interval, "pause_s": pause_s,
                     "pub_hwm": pub_hwm, "sub_hwm": sub_hwm, "req_timeout": req_timeout}
    res["wall_s"] = round(time.monotonic() - t_run0, 1)
    res["work_dir"] = str(work)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str))
    print_report(res, log)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--short", action="store_true", help="the CI form (about a minute)")
    p.add_argument("--duration", type=float)
    p.add_argument("--req-rate", type=float)
    p.add_argument("--pub-rate", type=float)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    base = dict(SHORT if a.short else FULL)
    for k in ("duration", "req_rate", "pub_rate"):
        if getattr(a, k) is not None:
            base[k] = getattr(a, k)
    res = run_chaos(agents=a.agents, seed=a.seed, out=a.out, **base)
    return 0 if res["ok"] and res["unaccounted_total"] == 0 and res["duplicates_total"] == 0 \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
