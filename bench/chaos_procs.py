"""The processes of one chaos run (router, agents, sides), the faults' bookkeeping, and the
stall detector that fails a run when its traffic stops moving.

Split from ``bench.chaos`` (the run itself and the monkey), which drives these.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.procs import ManagedProcess, agent_process, router_process

NS = "chaos/mesh"


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StallDetector(threading.Thread):
    """Fails the run when a watched progress counter stands still for ``limit`` seconds."""

    def __init__(self, out: Path, watch: dict[str, str], limit: float,
                 paused: Callable[[], set[str]]) -> None:
        super().__init__(name="chaos-stall", daemon=True)
        self.out, self.watch, self.limit, self.paused = out, watch, limit, paused
        self.stop_ev = threading.Event()
        self.stalled: str | None = None
        self.max_still: dict[str, float] = {}

    def run(self) -> None:
        last: dict[str, tuple[Any, float]] = {}
        while not self.stop_ev.wait(0.5):
            now = time.monotonic()
            for name, key in self.watch.items():
                prog = read_json(self.out / f"{name}.progress.json") or {}
                val = prog.get(key)
                prev = last.get(name)
                if prev is None or val != prev[0] or name in self.paused():
                    last[name] = (val, now)
                    continue
                still = now - prev[1]
                self.max_still[name] = max(self.max_still.get(name, 0.0), still)
                if still > self.limit and self.stalled is None:
                    self.stalled = f"{name}: {key} stuck at {val} for {still:.1f}s"

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(5)


class Chaos:
    """The processes of one run and the faults done to them."""

    def __init__(self, work: Path, env: dict[str, str], agents: int, pub_hwm: int,
                 log: Callable[[str], None]) -> None:
        self.work, self.env, self.n_agents, self.log = work, env, agents, log
        self.logs = work / "logs"
        self.out = work / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self.router_extra = ["--auth-port", "0", "--pub-hwm", str(pub_hwm)]
        self.procs: list[ManagedProcess] = []  # every process ever started (to reap)
        self.router: ManagedProcess | None = None
        self.agents: dict[int, ManagedProcess] = {}
        self.sides: dict[str, ManagedProcess] = {}
        self.endpoint = ""
        self.pub = ""
        self.restarts = 0
        self.req_timeout = 5.0
        self.rss_start: dict[str, dict[str, Any]] = {}

    def start(self, proc: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
        self.procs.append(proc)
        proc.start(timeout)
        self.rss_start[proc.name] = {"pid": proc.pid, "rss": rss_bytes(proc.pid)}
        return proc

    def start_router(self) -> ManagedProcess:
        self.restarts += 1
        kw = {"bind": self.endpoint, "pub_bind": self.pub} if self.endpoint else {}
        r = self.start(router_process(f"router{self.restarts}", extra=self.router_extra,
                                      log_dir=self.logs, env=self.env, **kw))
        self.endpoint, self.pub = r.ready_info["router"], r.ready_info["pub"]
        self.router = r
        return r

    def start_agent(self, i: int, gen: int = 0) -> ManagedProcess:
        p = self.start(agent_process(
            "agents.echo", self.endpoint, name=f"agent{i}-{gen}", log_dir=self.logs,
            env=self.env, extra=["--namespace", NS, "--instance", f"a{i}", "--identity",
                                 f"chaos-agent{i}", "--capacity", "512"]))
        self.agents[i] = p
        return p

    def start_side(self, side: str, name: str, args: list[str]) -> ManagedProcess:
        p = self.start(ManagedProcess(name, [
            "-m", "bench.chaos_sides", side, "--endpoint", self.endpoint, "--identity",
            f"chaos-{name}", "--out", str(self.out), "--name", name, *args],
            log_dir=self.logs, env=self.env))
        self.sides[name] = p
        return p

    def reap_all(self) -> None:
        for p in reversed(self.procs):
            if p.proc is not None and p.proc.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)  # a stopped process cannot handle TERM
                except OSError:
                    pass
            p.stop(timeout=10)
