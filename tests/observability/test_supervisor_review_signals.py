"""A stop that comes while ``agp up`` is still starting the mesh (Ctrl-C, or ``agp down``
from another shell) ends the start at once: the supervisor stops what it had started and
exits, instead of waiting out every agent's ready timeout (a minute for a slow one) and
then starting the whole mesh only to stop it again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.procs import ManagedProcess
from agents.supervisor_config import read_state, same_process
from security.home import Home
from tests.observability.test_supervisor_state import (
    SLOW_MODULE,
    agp,
    mesh_processes,
    slow_agent_recorded,
    supervisor,
    write_config,
)


@pytest.fixture
def leftovers(mesh_home: Home) -> Iterator[Callable[[], list[str]]]:
    """What of this test's mesh still runs; anything left at the end is killed (by pid and
    start time) and fails the test."""
    def left() -> list[str]:
        return [argv for _, _, argv in mesh_processes(mesh_home.root)]

    yield left
    leaked = mesh_processes(mesh_home.root)
    for pid, start, _ in leaked:
        if same_process(pid, start):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes of the test's mesh outlived it: {leaked}"


@pytest.mark.parametrize("how", ["SIGINT", "agp down"])
def test_a_stop_while_starting_ends_the_start_at_once(
        how: str, spawn: Callable[..., ManagedProcess], leftovers: Callable[[], list[str]],
        tmp_path: Path) -> None:
    started = tmp_path / "slow-started"
    started.mkdir()
    gate = tmp_path / "slow-gate"  # never opened: the agent stays "starting" for 60 s
    env = f'SLOW_STARTED = "{started}", SLOW_GATE = "{gate}", SLOW_GATE_LIMIT = "60"'
    config = write_config(tmp_path / "mesh.toml", module=SLOW_MODULE, env=env)
    run_dir = tmp_path / "run"
    sup = supervisor(spawn, config, run_dir, ready=False)
    slow_agent_recorded(run_dir, started)
    assert len(leftovers()) == 3  # the supervisor, the router and the agent still starting
    asked = time.monotonic()
    if how == "SIGINT":  # Ctrl-C in the terminal of `agp up`
        os.kill(sup.pid, signal.SIGINT)
    else:
        out = agp("down", "--run-dir", str(run_dir), "--timeout", "10")
        assert out.returncode == 0, out.stderr
    code = sup.proc.wait(20)  # before: it went on waiting for the agent's ready line
    took = time.monotonic() - asked
    assert took < 15, f"the supervisor took {took:.1f}s to stop while starting"
    assert code == 1  # exited on its own (not killed by `agp down` after its grace)
    log = (tmp_path / "logs" / "supervisor.log").read_text()
    assert "stopped while the mesh was starting" in log
    assert "Traceback" not in log
    assert read_state(run_dir)["state"] == "stopped"
    assert leftovers() == []
