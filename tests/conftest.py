"""Fixtures: real router and agent processes on loopback with ephemeral ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.procs import ManagedProcess, agent_process, router_process

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AGP_MDNS", "0")


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
def router(spawn: Callable[..., ManagedProcess]) -> ManagedProcess:
    """A fresh insecure router process (security has its own tests)."""
    return spawn(router_process(extra=["--insecure"]))


@pytest.fixture
def start_echo(spawn: Callable[..., ManagedProcess], router: ManagedProcess
               ) -> Callable[..., ManagedProcess]:
    count = [0]

    def _start(*, namespace: str = "test/ns", weight: int = 1, capacity: int = 64,
               instance: str | None = None, extra: list[str] | None = None) -> ManagedProcess:
        count[0] += 1
        name = instance or f"echo{count[0]}"
        args = ["--namespace", namespace, "--weight", str(weight), "--capacity", str(capacity),
                "--instance", name, "--insecure", *(extra or [])]
        return spawn(agent_process("agents.echo", router.ready_info["router"], name=name,
                                   extra=args))

    return _start
