"""`agp up` / `agp down` / `agp status` with real processes: restart after kill -9, scaling up
under load and down when idle, and a clean stop (also after the supervisor itself died)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.procs import ManagedProcess
from agents.supervisor_config import load_config, parse_config, read_state, same_process
from mesh import Mesh
from mesh.errors import ConfigError, Error
from mesh.process_identity import proc_starttime
from security.home import Home
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, *, min_: int = 1, max_: int = 1, capacity: int = 8,
                 control: bool = False, scaling: str = "") -> Path:
    path.write_text(f"""
[mesh]
router = "tcp://127.0.0.1:0"
pub = "tcp://127.0.0.1:0"
control_port = {0 if control else "false"}
registry = false

[scaling]
{scaling}

[agents.echo]
module = "agents.echo"
namespace = "test/sup"
replicas = {{ min = {min_}, max = {max_} }}
capacity = {capacity}
""")
    return path


@pytest.fixture
def supervise(spawn: Callable[..., ManagedProcess], mesh_home: Home,
              tmp_path: Path) -> Iterator[Callable[..., tuple[ManagedProcess, Path]]]:
    """Start `agp up` (foreground supervisor) for a config; returns (process, run dir).
    Whatever the test did (a killed supervisor, a failed assert), `agp down` then stops
    every process the state file names, by pid and start time."""
    run_dirs: list[Path] = []

    def start(config: Path) -> tuple[ManagedProcess, Path]:
        run_dir = tmp_path / "run"
        run_dirs.append(run_dir)
        proc = spawn(ManagedProcess("supervisor", ["-m", "agents.supervisor_cli", "up",
                                                   "--config", str(config),
                                                   "--run-dir", str(run_dir)]), 60)
        return proc, run_dir

    yield start
    for run_dir in run_dirs:
        state = read_state(run_dir)
        if state is not None and state.get("state") != "stopped":
            agp("down", "--run-dir", str(run_dir), "--timeout", "10")
        state = read_state(run_dir) or {"processes": []}
        left = [p["name"] for p in state["processes"]
                if same_process(p["pid"], p["starttime"])]
        assert not left, f"processes the supervisor started outlived the test: {left}"


def agp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)


def instances(m: Mesh, service: str) -> list[str]:
    for s in m.request("agp/router", "services", timeout=5):
        if s["service"] == service:
            return [i["name"] for i in s["instances"] if i.get("accepting", True)]
    return []


def test_config_parses_and_refuses_mistakes() -> None:
    cfg = load_config(ROOT / "configs" / "mesh.toml")
    assert {a.name: (a.module, a.namespace, a.min, a.max) for a in cfg.agents} == {
        "data_analyst": ("agents.data_analyst", "acme/ml", 1, 3),
        "ml_trainer": ("agents.ml_trainer", "acme/ml", 2, 4),
        "inference_service": ("agents.inference_service", "acme/ml", 1, 4),
        "notification": ("agents.notification", "acme/ops", 1, 2)}
    assert cfg.registry
    assert cfg.control_port == 7790
    with pytest.raises(ConfigError) as err:
        parse_config({"mesh": {"bogus": 1}, "agents": {"x": {"namespace": "nope", "min": 3,
                                                              "max": 1}}})
    for part in ("bogus", "namespace", "min <= max"):
        assert part in str(err.value)


def test_config_values_are_typed_strictly() -> None:
    """TOML strings are not booleans: "false" must not turn security off."""
    with pytest.raises(ConfigError) as err:
        parse_config({"mesh": {"insecure": "false", "registry": "no", "run_dir": 5},
                      "scaling": 5,
                      "agents": {"a": {"namespace": "o/n", "min": "two"},
                                 "b": {"namespace": "o/n", "capacity": -5, "weight": "heavy"}}})
    message = str(err.value)
    for part in ("insecure must be true or false", "registry must be true or false",
                 "run_dir must be a string", "[scaling] must be a table",
                 "[agents.a] min, max and replicas must be integers",
                 "[agents.b] capacity must be an integer >= 1",
                 "[agents.b] weight must be an integer >= 1"):
        assert part in message
    assert parse_config({"mesh": {"insecure": False}}).insecure is False


def test_a_record_without_start_time_names_no_process() -> None:
    """A state file written after a child exited has no start time for it: its pid may be
    anyone's by now, and agp down must not signal it (this very process, say)."""
    assert not same_process(os.getpid(), None)
    assert same_process(os.getpid(), proc_starttime(os.getpid()))


def test_restart_after_kill_9(supervise: Callable[..., Any], tmp_path: Path) -> None:
    sup, run_dir = supervise(write_config(tmp_path / "mesh.toml", control=True))
    ep = sup.ready_info["router"]
    # no circuit breaker: the probe below fails fast in a loop, and an open breaker would
    # add its own 5 s to the figure
    with Mesh.connect(ep, identity="tester", breakers=False) as m:
        before = m.request("test/sup/echo", "whoami", timeout=5)
        assert before["pid"] == sup.ready_info["processes"]["echo-0"]
        os.kill(before["pid"], signal.SIGKILL)
        killed = time.monotonic()

        def back() -> Any:
            try:
                now = m.request("test/sup/echo", "whoami", timeout=1)
            except Error:
                return None
            return now if now["pid"] != before["pid"] else None

        after = wait_for(back, 30, interval=0.05, message="a new echo process serving")
        recovery = time.monotonic() - killed
        assert instances(m, "test/sup/echo") == ["test/sup/echo/echo-0"]
    print(f"\nrecovery after kill -9: {recovery:.2f} s (new pid {after['pid']})")
    assert recovery < 30.0
    def recorded() -> Any:  # the restart at spawn; its recovery once the supervisor saw it ready
        s = read_state(run_dir)
        p = s and next(p for p in s["processes"] if p["name"] == "echo-0")
        return s if p and p["restarts"] == 1 and p["last_recovery_s"] is not None else None

    state = wait_for(recorded, 10, message="restart and recovery recorded")
    echo = next(p for p in state["processes"] if p["name"] == "echo-0")
    assert echo["pid"] == after["pid"]
    assert 0 < echo["last_recovery_s"] < recovery
    out = agp("status", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert "echo-0" in out.stdout
    assert "test/sup/echo" in out.stdout
    assert "NO" not in out.stdout


def test_scale_up_under_load_then_down_when_idle(supervise: Callable[..., Any],
                                                 tmp_path: Path) -> None:
    scaling = ("interval = 0.25\nup_queue = 2\nup_after = 0.5\ndown_after = 1.5\n"
               "cooldown = 0.5")
    sup, run_dir = supervise(write_config(tmp_path / "mesh.toml", min_=1, max_=3, capacity=2,
                                          scaling=scaling))
    ep = sup.ready_info["router"]
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []
    with Mesh.connect(ep, identity="tester") as m:
        def load() -> None:  # 12 callers, each with one slow call in flight: the queue grows
            deadline = time.monotonic() + 40
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    m.request("test/sup/echo", "sleep", 0.2, timeout=10)
                except Error as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(12)]
        for t in threads:
            t.start()
        try:
            def at_max() -> bool:
                seen.append(len(instances(m, "test/sup/echo")))
                return seen[-1] == 3
            wait_for(at_max, 30, interval=0.1, message="scaled up to max=3")
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert max(seen) == 3  # never past max
        assert not errors, errors[:3]
        wait_for(lambda: len(instances(m, "test/sup/echo")) == 1, 30, interval=0.1,
                 message="scaled back down to min=1 when idle")
    state = wait_for(lambda: (s := read_state(run_dir)) and len(
        [p for p in s["processes"] if p["role"] == "agent"]) == 1 and s, 30,
        message="retired replicas gone from the state file")
    kinds = [e["event"] for e in state["events"]]
    assert kinds.count("scaled_up") == 2, kinds
    assert kinds.count("scaled_down") == 2, kinds


def test_down_leaves_no_process(supervise: Callable[..., Any], tmp_path: Path) -> None:
    sup, run_dir = supervise(write_config(tmp_path / "mesh.toml", min_=2, max_=2,
                                          control=True))
    state = read_state(run_dir)
    assert state is not None
    procs = state["processes"]
    assert {p["name"] for p in procs} == {"router", "control", "echo-0", "echo-1"}
    assert all(same_process(p["pid"], p["starttime"]) for p in procs)
    # the hard case: the supervisor itself is killed, its children are orphans
    os.kill(sup.pid, signal.SIGKILL)
    sup.proc.wait(10)
    assert all(same_process(p["pid"], p["starttime"]) for p in procs)
    out = agp("down", "--run-dir", str(run_dir), "--timeout", "10")
    assert out.returncode == 0, out.stderr
    left = [p["name"] for p in procs if same_process(p["pid"], p["starttime"])]
    assert not left
    assert read_state(run_dir)["state"] == "stopped"
    assert agp("status", "--run-dir", str(run_dir)).returncode == 3


def test_down_stops_a_running_supervisor(supervise: Callable[..., Any], tmp_path: Path) -> None:
    sup, run_dir = supervise(write_config(tmp_path / "mesh.toml"))
    procs = read_state(run_dir)["processes"]
    out = agp("down", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert sup.proc.wait(10) == 0  # it stopped its children itself, then exited
    assert not [p["name"] for p in procs if same_process(p["pid"], p["starttime"])]
