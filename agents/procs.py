"""Child processes of the local mesh: start, wait until ready, stop by pid, never hang.

Each child prints one JSON line ``{"event": "ready", ...}`` on stdout when it serves; we
wait for that line (with a deadline) instead of sleeping. Output goes to one log file per
process. ``stop()`` sends SIGTERM, waits, then SIGKILL: only to the pid we started.
:class:`MeshLaunch` says how each process of a configured mesh is started (command line,
environment, identity), apart from when the supervisor starts it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from agents.supervisor_config import AgentSpec, MeshConfig
from mesh.errors import Cancelled, DeadlineExceeded, Unavailable
from mesh.process_identity import proc_starttime

ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_IDENTITY = "agp-supervisor"
CONTROL_IDENTITY = "agp-control"
REGISTRY_IDENTITY = "agp-registry"
KEYS_IDENTITY = "agp-keys"  # the topic key service, agp/system/keys
# JSON lines from a child that no one has waited for yet: past this many, later ones are
# dropped (and counted; the log has them all). A child that logs JSON on stdout for as long
# as it runs would otherwise grow its parent (the supervisor runs for days) by every line.
# The oldest are kept: a burst right after the ready line must not push that line out.
EVENTS_KEPT = 256
CANCEL_POLL = 0.1  # seconds between looks at a wait's ``cancelled`` while it waits


class ManagedProcess:
    """``python ARGS`` as a child (after ``launcher``, e.g. ``ip netns exec NS``); ``env``
    adds to this process's environment (None unsets a name); ``stdin`` keeps a pipe to it."""

    def __init__(self, name: str, args: list[str], *, log_dir: Path | None = None,
                 env: Mapping[str, str | None] | None = None, launcher: Sequence[str] = (),
                 stdin: bool = False, cwd: Path | None = None) -> None:
        self.name = name
        self.args = args
        self.log_dir = log_dir
        self.env = env
        self.launcher = list(launcher)
        self.stdin = stdin
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_info: dict[str, Any] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.dropped_events = 0  # JSON lines not queued: EVENTS_KEPT were unread
        self.starttime: int | None = None  # the child's kernel start time, read at spawn
        self._log: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def start(self, ready_timeout: float | None = 30.0, *,
              on_spawn: Callable[[], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Start; wait for the ready line unless ``ready_timeout`` is None. ``on_spawn`` runs
        once the process exists, before it is ready (to record its pid at once); the wait
        ends with Cancelled (and the process stopped) once ``cancelled()`` is true."""
        env = dict(os.environ)
        for key, value in (self.env or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, *self.args], stdout=subprocess.PIPE,
            stdin=subprocess.PIPE if self.stdin else None,
            stderr=self._log if self._log is not None else subprocess.DEVNULL,
            env=env, cwd=self.cwd, start_new_session=True,
        )
        self.started_at = time.monotonic()
        # read now, while the child is ours (unreaped, its pid cannot be another's): a
        # record written after it died and was reaped must not name whoever got its pid
        self.starttime = proc_starttime(self.proc.pid)
        self._reader = threading.Thread(target=self._read, name=f"read-{self.name}",
                                        daemon=True)
        self._reader.start()
        if ready_timeout is None:
            return {}
        try:
            if on_spawn is not None:
                on_spawn()
            return self.wait_ready(ready_timeout, cancelled=cancelled)
        except BaseException:
            self.stop(timeout=5)  # never ready: not left running behind its caller
            raise

    def wait_ready(self, timeout: float = 30.0, *,
                   cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
        self.ready_info = self.wait_event("ready", timeout, cancelled=cancelled)
        return self.ready_info

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
            if line.startswith(b"{"):
                try:
                    self._keep(json.loads(line))
                except ValueError:
                    pass
        self._events.put({"event": "exited"})  # never dropped: every wait must learn it

    def _keep(self, ev: dict[str, Any]) -> None:
        """Queue ``ev`` for a wait, unless EVENTS_KEPT are unread already."""
        if self._events.qsize() >= EVENTS_KEPT:
            self.dropped_events += 1  # (only this reader thread writes it)
        else:
            self._events.put(ev)

    def wait_event(self, event: str, timeout: float, *,
                   cancelled: Callable[[], bool] | None = None, **match: Any
                   ) -> dict[str, Any]:
        """The next ``event`` line (whose fields equal ``match``); DeadlineExceeded after
        ``timeout``, Unavailable once the process exited, Cancelled once ``cancelled()``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.name}: no {event!r} within {timeout:g}s")
            if cancelled is not None:
                if cancelled():
                    raise Cancelled(f"{self.name}: stopped while waiting for {event!r}")
                remaining = min(remaining, CANCEL_POLL)
            try:
                ev = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                return ev
            if ev.get("event") == "exited":
                self._events.put(ev)  # every later wait learns it too
                how = "exited"
                if self.proc is not None:
                    try:
                        how = f"exited with {self.proc.wait(10)}"
                    except subprocess.TimeoutExpired:
                        how = "closed its output (still running)"
                raise Unavailable(f"{self.name} {how} before {event!r} (see its log)")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def router_process(name: str = "router", *, bind: str = "tcp://127.0.0.1:0",
                   pub_bind: str = "tcp://127.0.0.1:0", extra: list[str] | None = None,
                   log_dir: Path | None = None, env: Mapping[str, str | None] | None = None
                   ) -> ManagedProcess:
    return ManagedProcess(name, ["-m", "router", "--bind", bind, "--pub-bind", pub_bind,
                                 *(extra or [])], log_dir=log_dir, env=env)


def agent_process(module: str, endpoint: str, *, name: str, extra: list[str] | None = None,
                  log_dir: Path | None = None, env: Mapping[str, str | None] | None = None
                  ) -> ManagedProcess:
    return ManagedProcess(name, ["-m", module, "--endpoint", endpoint, *(extra or [])],
                          log_dir=log_dir, env=env)


class MeshLaunch:
    """The command line, environment and identity of each process a :class:`MeshConfig`
    asks for; the supervisor decides when (and how often) each is started."""

    def __init__(self, config: MeshConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.home = ""  # AGP_HOME, once prepare_home ran (empty when insecure)

    def prepare_home(self) -> None:
        """Open AGP_HOME, make the router's keys on first use and enroll one identity per
        service (role ``agent``, bound to its namespace), plus admin identities for the
        supervisor and the control plane, which read the router's own service."""
        if self.config.insecure:
            return
        from security.home import enroll_identity, ensure_router, open_home

        home = open_home(self.config.home or None)
        self.home = str(home.root)
        os.environ["AGP_HOME"] = self.home  # the supervisor's own mesh client uses it too
        ensure_router(home)
        enroll_identity(home, SUPERVISOR_IDENTITY, roles=("admin",))
        enroll_identity(home, CONTROL_IDENTITY, roles=("admin",))
        if self.config.registry:
            enroll_identity(home, REGISTRY_IDENTITY, roles=("agent",), namespace="agp/system")
            enroll_identity(home, KEYS_IDENTITY, roles=("agent",), namespace="agp/system")
        for spec in self.config.agents:
            enroll_identity(home, spec.identity, roles=("agent",), namespace=spec.namespace)

    def env(self) -> dict[str, str]:
        """What each child adds to the supervisor's environment."""
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "AGP_METRICS_PORT": "0"}  # agents pick a free port
        if self.home:
            env["AGP_HOME"] = self.home
        return env

    def _security(self, identity: str) -> list[str]:
        return ["--insecure"] if self.config.insecure else ["--identity", identity]

    def router(self, bind: str, pub: str) -> ManagedProcess:
        c = self.config
        extra = ["--insecure"] if c.insecure else ["--auth-port", str(c.auth_port),
                                                    "--home", self.home]
        if c.metrics_port is not None:
            extra += ["--metrics-port", str(c.metrics_port)]
        return router_process(bind=bind, pub_bind=pub, extra=extra, log_dir=self.log_dir,
                              env=self.env())

    def control(self, endpoint: str, port: int) -> ManagedProcess:
        store = self.config.store
        args = ["-m", "router.control", "--endpoint", endpoint, "--port", str(port),
                *(["--store", store] if store else []), *self._security(CONTROL_IDENTITY)]
        return ManagedProcess("control", args, log_dir=self.log_dir, env=self.env())

    def registry(self, endpoint: str) -> ManagedProcess:
        return agent_process("discovery.service", endpoint, name="registry",
                             extra=["--instance", "registry-0",
                                    *self._security(REGISTRY_IDENTITY)],
                             log_dir=self.log_dir, env=self.env())

    def keys(self, endpoint: str) -> ManagedProcess:
        """The topic key service (end-to-end pub/sub's per-topic keys, handed only to
        authorized subscribers); it finds its readers' keys in the registry."""
        return agent_process("security.key_service", endpoint, name="keys",
                             extra=["--instance", "keys-0", *self._security(KEYS_IDENTITY)],
                             log_dir=self.log_dir, env=self.env())

    def agent(self, spec: AgentSpec, instance: str, endpoint: str) -> ManagedProcess:
        args = ["--namespace", spec.namespace, "--name", spec.service, "--instance", instance,
                *(["--capacity", str(spec.capacity)] if spec.capacity else []),
                *(["--weight", str(spec.weight)] if spec.weight else []),
                *self._security(spec.identity), *spec.args]
        return agent_process(spec.module, endpoint, name=instance, extra=args,
                             log_dir=self.log_dir, env={**self.env(), **spec.env})
