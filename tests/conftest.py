"""Fixtures: real router and agent processes on loopback with ephemeral ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.procs import ManagedProcess, agent_process, router_process
from security.home import Home, enroll_identity, ensure_router, open_home

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AGP_MDNS", "0")


@pytest.fixture(autouse=True)
def _no_leaked_agp_environment() -> Iterator[None]:
    """A test that leaves AGP_* variables changed fails: the next test would connect with
    another's identity (as a local mesh's client once did to a test run after it)."""
    before = {k: v for k, v in os.environ.items() if k.startswith("AGP_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("AGP_")}
    assert after == before, f"AGP_* environment changed: {set(after.items()) ^ set(before.items())}"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def spawn(log_dir: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """Start processes; every one is stopped (by pid) when the test ends."""
    started: list[ManagedProcess] = []

    def _spawn(proc: ManagedProcess, ready_timeout: float = 30.0) -> ManagedProcess:
        proc.log_dir = proc.log_dir or log_dir
        started.append(proc)
        proc.start(ready_timeout)
        return proc

    yield _spawn
    for p in reversed(started):
        p.stop(timeout=10)
    leaked = [p.name for p in started if p.alive()]
    assert not leaked, f"processes still alive after the test: {leaked}"


@pytest.fixture
def mesh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """A fresh AGP_HOME: router keys, default policy, and the test's own identity
    ("tester", an admin) that Mesh.connect() picks up from AGP_IDENTITY."""
    monkeypatch.setenv("AGP_HOME", str(tmp_path / "agp-home"))
    home = open_home()
    ensure_router(home)
    enroll_identity(home, "tester", roles=("admin",))
    monkeypatch.setenv("AGP_IDENTITY", "tester")
    return home


@pytest.fixture
def router(spawn: Callable[..., ManagedProcess], mesh_home: Home) -> ManagedProcess:
    """A fresh secure router process: CURVE + ZAP, tokens, RBAC."""
    return spawn(router_process(extra=["--auth-port", "0"]))


@pytest.fixture
def enroll(mesh_home: Home) -> Callable[..., str]:
    """Enroll an agent identity allowed to register in ``namespace``; returns its name."""

    def _enroll(name: str, namespace: str, roles: tuple[str, ...] = ("agent",)) -> str:
        enroll_identity(mesh_home, name, roles=roles, namespace=namespace)
        return name

    return _enroll


@pytest.fixture
def start_echo(spawn: Callable[..., ManagedProcess], router: ManagedProcess,
               enroll: Callable[..., str]) -> Callable[..., ManagedProcess]:
    count = [0]

    def _start(*, namespace: str = "test/ns", weight: int = 1, capacity: int = 64,
               instance: str | None = None, extra: list[str] | None = None) -> ManagedProcess:
        count[0] += 1
        name = instance or f"echo{count[0]}"
        identity = enroll(f"echo-{name}", namespace)
        args = ["--namespace", namespace, "--weight", str(weight), "--capacity", str(capacity),
                "--instance", name, "--identity", identity, *(extra or [])]
        return spawn(agent_process("agents.echo", router.ready_info["router"], name=name,
                                   extra=args))

    return _start
