"""A whole local mesh as child processes: router, registry, the four work agents.

Used by ``make demo``, the scenario tests and the examples' ``--local`` mode. Agents start
in parallel (each waits for its JSON ready line, never a sleep), so the mesh is up in about
the time of the slowest import; ``stop()`` ends every process it started, by pid.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from agents.procs import ManagedProcess, agent_process, router_process
from mesh.errors import Error

ROOT = Path(__file__).resolve().parent.parent
WORK_AGENTS = ("data_analyst", "ml_trainer", "inference_service", "notification")


class LocalMesh:
    """Start with :meth:`start` (or ``with LocalMesh(...) as lm``); ``lm.endpoint``."""

    def __init__(self, log_dir: Path, *, namespace: str = "demo/ml",
                 counts: dict[str, int] | None = None, registry: bool = True,
                 env: dict[str, str] | None = None, secure: bool = True,
                 client: str = "demo-client") -> None:
        self.log_dir = Path(log_dir)
        self.secure = secure
        self.client = client
        self.home: Any = None
        self._saved_env: dict[str, str | None] = {}
        self.namespace = namespace
        self.counts = {name: 1 for name in WORK_AGENTS}
        self.counts["ml_trainer"] = 2  # two trainers: a retry has somewhere else to go
        self.counts.update(counts or {})
        self.registry = registry
        # Children import this checkout whatever the caller's cwd (installed or not).
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {"AGP_ALERT_DIR": str(self.log_dir / "alerts"), "PYTHONPATH": path,
                    **(env or {})}
        self.router: ManagedProcess | None = None
        self.agents: list[ManagedProcess] = []
        self.endpoint = ""

    def _secure_home(self) -> None:
        """An AGP_HOME for this mesh: router keys, one identity per agent kind (replicas of
        a service share it, so a sealed request opens on whichever instance gets it), and
        this process's client identity, which ``Mesh.connect()`` here then uses."""
        from security.home import enroll_identity, ensure_router, open_home

        self.home = open_home(self.log_dir / "home")
        ensure_router(self.home)
        enroll_identity(self.home, self.client, roles=("client",))
        enroll_identity(self.home, "registry", roles=("agent",), namespace="agp/system")
        enroll_identity(self.home, "keys", roles=("agent",), namespace="agp/system")
        self.env["AGP_HOME"] = str(self.home.root)
        # this process's client identity until stop(), which puts back what was there
        self._saved_env = {k: os.environ.get(k) for k in ("AGP_HOME", "AGP_IDENTITY")}
        os.environ["AGP_HOME"] = str(self.home.root)
        os.environ["AGP_IDENTITY"] = self.client

    def _flags(self, identity: str, namespace: str) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        from security.home import enroll_identity

        enroll_identity(self.home, identity, roles=("agent",), namespace=namespace)
        return ["--identity", identity]

    def start(self, timeout: float = 60.0) -> LocalMesh:
        try:
            if self.secure:
                self._secure_home()
            self.router = router_process(
                log_dir=self.log_dir, env=self.env,
                extra=["--auth-port", "0"] if self.secure else ["--insecure"])
            self.router.start(timeout)
            self.endpoint = self.router.ready_info["router"]
            procs = []
            if self.registry:
                procs.append(agent_process("discovery.service", self.endpoint, name="registry",
                                           log_dir=self.log_dir,
                                           extra=self._flags("registry", "agp/system"),
                                           env=self.env))
                if self.secure:  # pub/sub e2e: topic keys held by neither router nor proxy
                    procs.append(agent_process("security.key_service", self.endpoint,
                                               name="keys", log_dir=self.log_dir,
                                               extra=["--identity", "keys"], env=self.env))
            for agent, count in self.counts.items():
                for i in range(count):
                    procs.append(self.agent(agent, f"{agent}-{i}"))
            self.start_all(procs, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def agent(self, agent: str, instance: str, *, name: str | None = None,
              namespace: str | None = None, extra: list[str] | None = None,
              env: dict[str, str] | None = None) -> ManagedProcess:
        """A (not yet started) process serving ``agents.<agent>`` (in this namespace unless
        told otherwise); ``name`` renames its service."""
        ns = namespace or self.namespace
        args = ["--namespace", ns, "--instance", instance,
                *self._flags(name or agent, ns), *(["--name", name] if name else []),
                *(extra or [])]
        return agent_process(f"agents.{agent}", self.endpoint, name=instance, extra=args,
                             log_dir=self.log_dir, env={**self.env, **(env or {})})

    def start_all(self, procs: list[ManagedProcess], timeout: float = 60.0) -> None:
        """Start processes in parallel; they join ``agents`` (and are stopped by stop())."""
        errors: list[BaseException] = []

        def start(p: ManagedProcess) -> None:
            try:
                p.start(timeout)
            except (Error, OSError) as exc:
                errors.append(exc)

        self.agents.extend(procs)
        threads = [threading.Thread(target=start, args=(p,), daemon=True) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
        if errors:
            raise errors[0]

    def find(self, instance: str) -> ManagedProcess:
        for p in self.agents:
            if p.name == instance:
                return p
        raise KeyError(instance)

    def stop(self) -> dict[str, Any]:
        """SIGTERM every process (agents first, router last); their exit codes."""
        codes: dict[str, Any] = {}
        for p in reversed(self.agents):
            codes[p.name] = p.stop()
        if self.router is not None:
            codes["router"] = self.router.stop()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}
        return codes

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
