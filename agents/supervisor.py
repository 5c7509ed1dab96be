"""The supervisor behind ``agp up``: start a local mesh from ``mesh.toml``, keep it running.

It starts the router, the control plane, the registry and every configured agent as child
processes (each waits for its JSON ready line; one log per process in ``run/logs/``), then
loops every 0.1 s:

* **restart**: a child that exited without being asked is started again, at once the first
  time (a crash of a process that ran for a while), then with doubling backoff while it keeps
  crashing young, so a broken agent cannot spin. Recovery time (exit noticed -> the new
  process announced ready) is measured and kept in the state file.
* **scale**: every ``scaling.interval`` it asks ``agp/router services`` for each service's
  queue depth and in-flight/capacity; a service hot for ``up_after`` s gets one more
  replica (up to ``max``), one idle for ``down_after`` s loses its newest (down to ``min``),
  which drains: SIGTERM, in-flight work finishes, nothing new is routed to it.

Security: it opens AGP_HOME (config ``home``, else the environment, else ~/.agp) and enrolls
the identities its processes use (``agents.procs.MeshLaunch``, which also holds each one's
command line). Everything it started is in ``run/supervisor.json`` (pids with their kernel
start times), written as each process starts, so ``agp down`` stops it all even if the
supervisor itself was killed, while it was still starting the mesh too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.autoscale import ScalePolicy
from agents.procs import SUPERVISOR_IDENTITY, ManagedProcess, MeshLaunch
from agents.supervisor_config import (
    AgentSpec,
    MeshConfig,
    proc_starttime,
    write_state,
    write_targets,
)
from mesh.errors import Cancelled

log = logging.getLogger("agp.supervisor")

YOUNG = 10.0  # a process that dies younger than this is crash-looping: back off


@dataclass
class Child:
    """One supervised process and its history."""

    name: str
    role: str  # router | control | registry (and the key service) | agent
    make: Any  # () -> ManagedProcess: a fresh one for each (re)start
    spec: AgentSpec | None = None
    proc: ManagedProcess | None = None
    restarts: int = 0
    delay: float = 0.0
    down_since: float | None = None  # monotonic time its exit was noticed
    last_recovery: float | None = None
    started: float = 0.0
    starting: bool = False
    retiring: bool = False  # being scaled down: do not restart
    info: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(self, config: MeshConfig, *, run_dir: str | Path | None = None,
                 config_path: str | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir or config.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self.config_path = config_path
        self.children: list[Child] = []
        self.endpoint = ""
        self.router_info: dict[str, Any] = {}
        self.control_url = ""
        self.launch = MeshLaunch(config, self.log_dir)
        self.state = "starting"  # then running, then stopped: as the state file says
        self.mesh: Any = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.interrupted = False  # a signal came: see interrupt()
        self.policy = ScalePolicy(config.scaling)
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ up and down
    def up(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start everything; returns the ready summary (router endpoint, control URL)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.launch.prepare_home()
        cfg, launch = self.config, self.launch
        try:
            router = self._add(Child("router", "router", lambda: launch.router(
                self.endpoint or cfg.router, self.router_info.get("pub", cfg.pub))))
            self._start(router, timeout)
            self._go_on()
            self.router_info = dict(router.info)
            self.endpoint = router.info["router"]
            firsts: list[Child] = []
            if cfg.control_port is not None:
                firsts.append(self._add(Child("control", "control", lambda: launch.control(
                    self.endpoint, self.router_info.get("control_port", cfg.control_port or 0)))))
            if cfg.registry:
                firsts.append(self._add(Child("registry", "registry",
                                              lambda: launch.registry(self.endpoint))))
                if not cfg.insecure:  # sealed pub/sub: topic keys, from readers' keys there
                    firsts.append(self._add(Child("keys", "registry",
                                                  lambda: launch.keys(self.endpoint))))
            for spec in self.config.agents:
                for i in range(spec.min):
                    firsts.append(self._new_replica(spec, i))
            self._start_all(firsts, timeout)
            self._go_on()
            for c in firsts:
                if c.role == "control":
                    self.control_url = c.info.get("url", "")
                    self.router_info["control_port"] = c.info.get("port")
            self._connect()
            self._go_on()
        except BaseException:
            self.down()
            raise
        self.state = "running"
        self.save()
        return self.summary()

    def interrupt(self) -> None:
        """Stop, from a signal handler: a start under way ends at once (each wait for a ready
        line polls this), no restart begins, :meth:`run` returns. A plain flag: an Event's
        lock, taken again by a handler that interrupted its holder, would deadlock."""
        self.interrupted = True

    def _stop_asked(self) -> bool:
        return self.interrupted or self._stopping.is_set()

    def _go_on(self) -> None:
        if self._stop_asked():  # (up() then stops what it started)
            raise Cancelled("stopped while the mesh was starting")

    def _connect(self) -> None:
        if not self.config.agents:
            return
        from mesh import Mesh

        self.mesh = Mesh.connect(self.endpoint, identity=None if self.config.insecure
                                 else SUPERVISOR_IDENTITY, timeout=10.0)

    def summary(self) -> dict[str, Any]:
        return {"event": "ready", "router": self.endpoint, "pub": self.router_info.get("pub"),
                "control": self.control_url, "home": self.launch.home,
                "run_dir": str(self.run_dir), "pid": os.getpid(),
                "processes": {c.name: c.proc.pid for c in self.children if c.proc is not None}}

    def down(self, timeout: float = 15.0) -> dict[str, Any]:
        """Stop every child: agents first (in parallel, they drain), then registry, control,
        router. Returns exit codes by name."""
        self._stopping.set()
        if self.mesh is not None:
            try:
                self.mesh.close()
            except Exception:
                pass
            self.mesh = None
        codes: dict[str, Any] = {}
        order = [("agent",), ("registry", "control"), ("router",)]
        for roles in order:
            group = [c for c in self.children if c.role in roles and c.proc is not None]
            threads = [threading.Thread(target=lambda c=c: codes.__setitem__(
                c.name, c.proc.stop(timeout)), daemon=True) for c in group]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout + 15)
        # a replica a scaling or restart thread was launching meanwhile is not launched, or
        # stops itself once started (both see _stopping): wait for those, so that none is
        # launched after this returns (the supervisor then exits) and outlives it
        deadline = time.monotonic() + timeout + 60
        while any(c.starting for c in self.children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in self.children:
            if c.proc is not None and c.proc.alive():
                codes[c.name] = c.proc.stop(timeout)
        self.state = "stopped"
        self.save()
        return codes

    # ------------------------------------------------------------------ children
    def _add(self, child: Child) -> Child:
        with self._lock:
            self.children.append(child)
        return child

    def _new_replica(self, spec: AgentSpec, index: int | None = None) -> Child:
        used = {c.name for c in self.children}
        i = index if index is not None else 0
        while f"{spec.name}-{i}" in used:
            i += 1
        name = f"{spec.name}-{i}"
        return self._add(Child(name, "agent", lambda: self.launch.agent(
            spec, name, self.endpoint), spec=spec))

    def _start(self, child: Child, timeout: float = 60.0) -> None:
        child.starting = True
        try:
            if child.proc is not None:
                child.proc.stop(1.0)  # already dead: closes its log and reader
            child.proc = child.make()
            if self._stop_asked() or child.retiring:  # `down` or a scale-down came first:
                return  # launch nothing
            child.info = child.proc.start(timeout, on_spawn=self.save,  # recorded at once
                                          cancelled=self._stop_asked)  # a stop ends the wait
            child.started = time.monotonic()
            if self._stop_asked():  # `down` ran while this one was starting
                child.proc.stop(10.0)
                return
            if child.down_since is not None:
                child.last_recovery = child.started - child.down_since
                log.warning("%s recovered in %.2fs (restart %d)", child.name,
                            child.last_recovery, child.restarts)
                self.events.append({"event": "restarted", "name": child.name,
                                    "recovery_s": round(child.last_recovery, 3)})
                child.down_since = None
        finally:
            child.starting = False

    def _start_all(self, children: list[Child], timeout: float) -> None:
        errors: list[BaseException] = []

        def run(c: Child) -> None:
            try:
                self._start(c, timeout)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in children]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
        if errors:
            raise errors[0]

    def _restart_later(self, child: Child) -> None:
        def run() -> None:
            if self._stopping.wait(child.delay):  # stopped during the backoff: no start is
                child.starting = False  # under way, and down() must not wait for one
                return
            try:
                self._start(child, 30.0)
            except Exception as exc:
                if not self._stop_asked():
                    log.error("%s failed to restart: %s", child.name, exc)
            if child.role == "router" and child.proc is not None and child.proc.alive():
                self.endpoint = child.info.get("router", self.endpoint)
            self.save()

        threading.Thread(target=run, name=f"restart-{child.name}", daemon=True).start()

    def check(self, now: float) -> None:
        """Notice exited children and schedule their restart (with backoff)."""
        with self._lock:
            children = list(self.children)
        for c in children:
            if c.starting or c.proc is None or c.proc.alive() or self._stop_asked():
                continue
            if c.retiring:
                continue
            backoff = min(self.config.restart_backoff_max,
                          max(self.config.restart_backoff, c.delay * 2))
            if c.down_since is None:  # a fresh exit: at once, unless it keeps dying young
                c.down_since = now
                c.delay = backoff if now - c.started < YOUNG and c.restarts else 0.0
            else:  # the last restart attempt failed
                c.delay = backoff
            c.restarts += 1
            code = c.proc.proc.returncode if c.proc.proc is not None else None
            log.warning("%s (pid %d) exited with %s; restarting in %.2fs", c.name,
                        c.proc.pid, code, c.delay)
            c.starting = True
            self._restart_later(c)

    # ------------------------------------------------------------------ scaling
    def scale(self, now: float) -> None:
        """One scaling decision per service from the router's view of its load."""
        if self.mesh is None:
            return
        from mesh.errors import Error

        try:
            services = {s["service"]: s for s in
                        self.mesh.request("agp/router", "services", timeout=2.0)}
        except Error as exc:
            log.debug("services: %s", exc)
            return
        for spec in self.config.agents:
            svc = services.get(spec.full_name)
            if svc is None:
                continue
            replicas = [c for c in self.children if c.spec is spec and not c.retiring]
            queued = int(svc.get("queued", 0))
            insts = svc.get("instances", [])
            inflight = sum(int(i.get("inflight", 0)) for i in insts)
            capacity = sum(int(i.get("capacity", 0)) for i in insts)
            key, n = spec.full_name, len(replicas)
            decision = self.policy.decide(key, now, queued=queued, inflight=inflight,
                                          capacity=capacity, replicas=n, minimum=spec.min,
                                          maximum=spec.max)
            if decision == "up":
                child = self._new_replica(spec)
                log.warning("scaling %s up to %d (queued %d, %d/%d in flight)", key, n + 1,
                            queued, inflight, capacity)
                self._scaled(key, "up", n + 1)
                child.starting = True  # before its thread runs: a down() now waits for it
                threading.Thread(target=self._start_new, args=(child,), daemon=True).start()
            elif decision == "down":
                settled = [c for c in replicas if not c.starting]  # a restarting one would
                if not settled:  # come back unsupervised once retired
                    continue
                victim = max(settled, key=lambda c: c.started)
                victim.retiring = True
                log.warning("scaling %s down to %d (idle)", key, n - 1)
                self._scaled(key, "down", n - 1)
                threading.Thread(target=self._retire, args=(victim,), daemon=True).start()

    def _scaled(self, key: str, direction: str, replicas: int) -> None:
        self.events.append({"event": f"scaled_{direction}", "service": key,
                            "replicas": replicas, "time": time.time()})

    def _start_new(self, child: Child) -> None:
        try:
            self._start(child, 30.0)
        except Exception as exc:
            log.error("%s failed to start: %s", child.name, exc)
        self.save()

    def _retire(self, child: Child) -> None:
        if child.proc is not None:
            child.proc.stop(30.0)
        with self._lock:
            if child in self.children:
                self.children.remove(child)
        self.save()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event, tick: float = 0.1) -> None:
        """Supervise until ``stop`` is set or :meth:`interrupt` (the caller then calls
        :meth:`down`)."""
        next_scale = time.monotonic() + self.config.scaling.interval
        while not stop.wait(tick) and not self.interrupted:
            now = time.monotonic()
            self.check(now)
            if now >= next_scale:
                next_scale = now + self.config.scaling.interval
                try:
                    self.scale(now)
                except Exception:
                    log.exception("scaling round failed")

    def save(self) -> None:
        """Write the state file and the Prometheus targets. Under the lock: the threads that
        start, restart and retire children all save, each file through one temporary file."""
        with self._lock:
            procs = [{"name": c.name, "role": c.role,
                      "service": c.spec.full_name if c.spec else None,
                      "pid": c.proc.pid if c.proc else -1,
                      "starttime": c.proc.starttime if c.proc else None,
                      "restarts": c.restarts, "last_recovery_s": c.last_recovery,
                      "log": str(self.log_dir / f"{c.name}.log")}
                     for c in self.children]
            write_targets(self.run_dir, [
                {"targets": [f"127.0.0.1:{c.info['metrics_port']}"],
                 "labels": {"role": c.role, "process": c.name,
                            "service": c.spec.full_name if c.spec else c.name}}
                for c in self.children
                if c.info.get("metrics_port") and c.proc is not None and c.proc.alive()])
            write_state(self.run_dir, {
                "state": self.state, "config": self.config_path, "home": self.launch.home,
                "supervisor": {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())},
                "router": {"endpoint": self.endpoint, "pub": self.router_info.get("pub"),
                           "auth": self.router_info.get("auth")},
                "control": {"url": self.control_url}, "processes": procs,
                "events": self.events[-50:]})
