"""The supervisor's configuration (``mesh.toml``) and its state file (``run/supervisor.json``).

Kept apart from the supervisor loop so ``agp down`` and ``agp status`` read the state file
without importing what runs a mesh, and so a bad config fails before any process starts,
with every problem named.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError
from mesh.process_identity import proc_starttime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_FILE = "supervisor.json"


@dataclass
class AgentSpec:
    """One service the supervisor keeps running: ``replicas`` between ``min`` and ``max``."""

    name: str  # the agent (config key); the service is ``namespace/service``
    module: str
    namespace: str
    service: str
    min: int = 1
    max: int = 1
    capacity: int | None = None
    weight: int | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.service}"

    @property
    def identity(self) -> str:
        """The key name its processes use (one per service, shared by its replicas)."""
        return f"agent.{self.namespace.replace('/', '.')}.{self.service}"[:64]


@dataclass
class Scaling:
    """When to add or remove a replica. A service is *hot* while its router queue holds more
    than ``up_queue`` requests or its instances are at least ``up_load`` busy (in flight /
    capacity: the latency a new call would see rises with it), and *idle* while nothing is
    queued or in flight. Hot for ``up_after`` s adds one; idle for ``down_after`` s removes
    one; never two changes to a service within ``cooldown`` s."""

    interval: float = 1.0
    up_queue: int = 0
    up_load: float = 0.9
    up_after: float = 2.0
    down_after: float = 15.0
    cooldown: float = 3.0


@dataclass
class MeshConfig:
    home: str | None = None
    run_dir: str = "run"
    router: str = "tcp://127.0.0.1:7700"
    pub: str = "tcp://127.0.0.1:7701"
    auth_port: int = 0
    control_port: int | None = 7790
    metrics_port: int | None = None  # the router's /metrics
    registry: bool = True
    store: str | None = None
    insecure: bool = False
    restart_backoff: float = 0.25  # first restart delay after a crash of a young process
    restart_backoff_max: float = 10.0
    agents: list[AgentSpec] = field(default_factory=list)
    scaling: Scaling = field(default_factory=Scaling)
    source: str = ""


_MESH_KEYS = {"home", "run_dir", "router", "pub", "auth_port", "control_port", "metrics_port",
              "registry", "store", "insecure", "restart_backoff", "restart_backoff_max"}
_AGENT_KEYS = {"module", "namespace", "service", "min", "max", "replicas", "capacity", "weight",
               "args", "env"}
_TABLES = {"mesh", "scaling", "agents"}  # a misspelt one ([agent.x]) would go unread
_REPLICA_KEYS = {"min", "max"}


_MESH_TYPES = {"home": "a string", "run_dir": "a string", "router": "a string",
               "pub": "a string", "store": "a string", "registry": "true or false",
               "insecure": "true or false", "auth_port": "an integer",
               "restart_backoff": "a number", "restart_backoff_max": "a number"}


def _is(v: Any, want: str) -> bool:
    """TOML's own types, strictly: a bool is not a number, a number not a string."""
    if want == "true or false":
        return isinstance(v, bool)
    if want == "a string":
        return isinstance(v, str)
    if isinstance(v, bool):
        return False
    if want == "an integer":
        return isinstance(v, int) and v >= 0
    return isinstance(v, (int, float)) and v >= 0


def load_config(path: str | Path | None) -> MeshConfig:
    """Parse ``mesh.toml``; ``None`` gives the defaults with no agents. Raises ConfigError
    listing every problem."""
    if path is None:
        return MeshConfig()
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: {exc}")
    cfg = parse_config(doc, source=str(p))
    base = p.resolve().parent
    if not Path(cfg.run_dir).is_absolute() and "run_dir" in doc.get("mesh", {}):
        cfg.run_dir = str(base / cfg.run_dir)
    return cfg


def parse_config(doc: dict[str, Any], *, source: str = "") -> MeshConfig:
    problems = [f"unknown table [{k}] (known: [mesh], [scaling], [agents.NAME])"
                for k in sorted(set(doc) - _TABLES)]
    mesh = doc.get("mesh", {})
    if not isinstance(mesh, dict):
        raise ConfigError(f"{source}: [mesh] must be a table")
    for k in sorted(set(mesh) - _MESH_KEYS):
        problems.append(f"[mesh] unknown key {k!r}")
    cfg = MeshConfig(source=source)
    for k in sorted(_MESH_KEYS & set(mesh)):
        want = _MESH_TYPES.get(k)
        v = mesh[k]
        if want is not None and not _is(v, want):
            # ("false" is a string, and a true one: never read a setting by its truthiness)
            problems.append(f"[mesh] {k} must be {want}, not {v!r}")
        else:
            setattr(cfg, k, v)
    for k in ("control_port", "metrics_port"):  # false (or < 0) turns it off
        v = getattr(cfg, k)
        if v is False or (isinstance(v, int) and v < 0):
            setattr(cfg, k, None)
        elif v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            problems.append(f"[mesh] {k} must be a port number or false")
    scaling = doc.get("scaling", {})
    if not isinstance(scaling, dict):
        problems.append("[scaling] must be a table")
        scaling = {}
    for k, v in scaling.items():
        if not hasattr(Scaling, k):
            problems.append(f"[scaling] unknown key {k!r}")
        elif not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            problems.append(f"[scaling] {k} must be a number >= 0")
        else:
            setattr(cfg.scaling, k, v)
    agents = doc.get("agents", {})
    if not isinstance(agents, dict):
        problems.append("[agents] must be a table of [agents.NAME] tables")
        agents = {}
    for name, spec in agents.items():
        where = f"[agents.{name}]"
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a table")
            continue
        for k in sorted(set(spec) - _AGENT_KEYS):
            problems.append(f"{where} unknown key {k!r}")
        replicas = spec.get("replicas", {})
        if isinstance(replicas, dict):
            problems += [f"{where} replicas: unknown key {k!r}"
                         for k in sorted(set(replicas) - _REPLICA_KEYS)]
        counts = [spec.get("min"), spec.get("max"), replicas] + (
            [replicas.get("min"), replicas.get("max")] if isinstance(replicas, dict) else [])
        if not all(c is None or isinstance(c, dict) or _is(c, "an integer") for c in counts):
            problems.append(f"{where} min, max and replicas must be integers")
            continue
        lo = int(spec.get("min", replicas.get("min", 1) if isinstance(replicas, dict) else 1))
        hi = int(spec.get("max", replicas.get("max", lo) if isinstance(replicas, dict) else lo))
        if isinstance(replicas, int):
            lo = hi = replicas
        for k in ("capacity", "weight"):
            if spec.get(k) is not None and not (_is(spec[k], "an integer") and spec[k] >= 1):
                problems.append(f"{where} {k} must be an integer >= 1, not {spec[k]!r}")
        if lo < 0 or hi < max(lo, 1):
            problems.append(f"{where} needs 0 <= min <= max and max >= 1 (got {lo}..{hi})")
        ns = str(spec.get("namespace", ""))
        if ns.count("/") != 1 or not all(ns.split("/")):
            problems.append(f"{where} namespace must be 'org/namespace', not {ns!r}")
        args = spec.get("args", [])
        env = spec.get("env", {})
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            problems.append(f"{where} args must be a list of strings")
            args = []
        if not isinstance(env, dict):
            problems.append(f"{where} env must be a table")
            env = {}
        cfg.agents.append(AgentSpec(
            name=name, module=str(spec.get("module", f"agents.{name}")), namespace=ns,
            service=str(spec.get("service", name)), min=lo, max=hi,
            capacity=spec.get("capacity"), weight=spec.get("weight"), args=list(args),
            env={str(k): str(v) for k, v in env.items()}))
    if problems:
        raise ConfigError(f"{source or 'mesh config'}: " + "; ".join(problems))
    return cfg


# ---------------------------------------------------------------------- state file
def same_process(pid: int, starttime: int | None) -> bool:
    """Whether ``pid`` still names the process we recorded (alive, same start time). A
    record without a start time (the process had exited when it was written) names no
    process: its pid may be anyone's by now, and `agp down` must not signal it."""
    if pid <= 0 or starttime is None:
        return False
    return proc_starttime(pid) == starttime


def state_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATE_FILE


def write_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically replace the state file (a reader never sees half of one)."""
    path = state_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**state, "updated": time.time()}, indent=2) + "\n")
    os.replace(tmp, path)


def write_targets(run_dir: str | Path, targets: list[dict[str, Any]]) -> None:
    """Prometheus file_sd targets (every agent that reported a metrics port), replaced
    atomically as the state file is."""
    path = Path(run_dir) / "prometheus_agents.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    os.replace(tmp, path)


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(run_dir).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{state_path(run_dir)} is not valid JSON: {exc}")
