"""The supervisor's record of what it started, with real processes: a second ``agp up``
after a supervisor died stops what it left (and never starts beside a live one), a
supervisor killed while starting leaves a record ``agp down`` can use, and ``down`` does
not return while a replica is still being launched or a restart waits out its backoff.

Run as ``python -m tests.observability.test_supervisor_state`` this file is a slow echo
agent: it says it is ready only once the file ``$SLOW_GATE`` exists (for the cases where
the supervisor is stopped or killed while it starts)."""

from __future__ import annotations

import json
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
from agents.supervisor import Child, Supervisor
from agents.supervisor_config import parse_config, read_state, same_process
from mesh.process_identity import proc_starttime
from security.home import Home
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
SLOW_MODULE = "tests.observability.test_supervisor_state"
GATE_LIMIT = "20"  # seconds a slow agent waits for its gate before it gives up and exits


def _slow_agent_main() -> int:
    """Record this process (pid and start time), wait for the gate, then serve as echo."""
    pid = os.getpid()
    Path(os.environ["SLOW_STARTED"], str(pid)).write_text(str(proc_starttime(pid)))
    gate = Path(os.environ["SLOW_GATE"])
    deadline = time.monotonic() + float(os.environ.get("SLOW_GATE_LIMIT", GATE_LIMIT))
    while not gate.exists():
        if time.monotonic() > deadline:
            return 3  # never told to go on: exit rather than linger
        time.sleep(0.02)
    from agents.echo import Echo

    return Echo.main(sys.argv[1:])


def write_config(path: Path, *, module: str = "agents.echo", replicas: int = 1,
                 env: str = "", mesh: str = "") -> Path:
    path.write_text(f"""
[mesh]
router = "tcp://127.0.0.1:0"
pub = "tcp://127.0.0.1:0"
control_port = false
registry = false
{mesh}

[agents.echo]
module = "{module}"
namespace = "test/sup"
replicas = {{ min = {replicas}, max = {replicas} }}
env = {{ {env} }}
""")
    return path


def mesh_processes(home: Path) -> list[tuple[int, int | None, str]]:
    """Every process (but this one) whose environment names this test's AGP_HOME: all that
    a supervisor of this test started, recorded anywhere or not. (pid, start time, argv)."""
    needle = f"AGP_HOME={home}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        start = proc_starttime(int(entry.name))
        if needle in environ and start is not None:
            found.append((int(entry.name), start, argv))
    return found


@pytest.fixture
def no_mesh_left(mesh_home: Home) -> Iterator[Callable[[], list[str]]]:
    """What of this test's mesh still runs; at the end, anything left is killed (by pid and
    start time) and fails the test."""
    home = mesh_home.root

    def left() -> list[str]:
        return [argv for _, _, argv in mesh_processes(home)]

    yield left
    leaked = mesh_processes(home)
    for pid, start, _ in leaked:
        if same_process(pid, start):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes of the test's mesh outlived it: {leaked}"


def agp(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def supervisor(spawn: Callable[..., ManagedProcess], config: Path, run_dir: Path, *,
               ready: bool = True) -> ManagedProcess:
    """``agp up`` in the foreground, as a child of the test (its stderr in logs/)."""
    return spawn(ManagedProcess("supervisor", ["-m", "agents.supervisor_cli", "up",
                                               "--config", str(config),
                                               "--run-dir", str(run_dir)]),
                 60 if ready else None)


def slow_env(tmp_path: Path) -> tuple[str, Path, Path]:
    """The config env of a slow agent, its gate file and the folder its processes sign in."""
    started = tmp_path / "slow-started"
    started.mkdir(exist_ok=True)
    gate = tmp_path / "slow-gate"
    env = (f'SLOW_STARTED = "{started}", SLOW_GATE = "{gate}", '
           f'SLOW_GATE_LIMIT = "{GATE_LIMIT}"')
    return env, gate, started


def alive(entries: list[dict[str, Any]]) -> list[str]:
    return [p["name"] for p in entries if same_process(p["pid"], p["starttime"])]


def slow_agent_recorded(run_dir: Path, started: Path) -> dict[str, Any]:
    """Wait until the slow agent runs (it signed in) and the state file names it."""
    wait_for(lambda: any(started.iterdir()), 30, message="the slow agent started")
    return wait_for(lambda: (s := read_state(run_dir)) and "echo-0" in alive(
        s["processes"]) and s, 30, message="the starting agent in the state file")


# ---------------------------------------------------------------------- agp up, twice
def test_up_after_a_killed_supervisor_stops_what_it_left(
        spawn: Callable[..., ManagedProcess], no_mesh_left: Callable[[], list[str]],
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "mesh.toml", replicas=2)
    run_dir = tmp_path / "run"
    first = supervisor(spawn, config, run_dir)
    old = read_state(run_dir)["processes"]
    assert sorted(alive(old)) == ["echo-0", "echo-1", "router"]
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert sorted(alive(old)) == ["echo-0", "echo-1", "router"]  # orphans, still serving
    status = agp("status", "--run-dir", str(run_dir))
    assert status.returncode == 3
    assert "mesh: down (the supervisor recorded 'running' but is gone" in status.stdout
    as_json = json.loads(agp("status", "--json", "--run-dir", str(run_dir)).stdout)
    assert (as_json["state"], as_json["running"]) == ("down", False)

    second = supervisor(spawn, config, run_dir)
    assert not alive(old), "the second agp up left the first one's processes running"
    log = (tmp_path / "logs" / "supervisor.log").read_text()
    assert f"supervisor (pid {first.pid}) is not running" in log
    assert "stopped 3 processes it left" in log
    new = read_state(run_dir)["processes"]
    assert sorted(alive(new)) == ["echo-0", "echo-1", "router"]
    assert {p["pid"] for p in new}.isdisjoint({p["pid"] for p in old})
    # the record is whole again: agp down stops everything this test's mesh runs
    assert agp("down", "--run-dir", str(run_dir)).returncode == 0
    assert second.proc.wait(10) == 0
    assert no_mesh_left() == []


def test_up_refuses_while_a_supervisor_is_starting(
        spawn: Callable[..., ManagedProcess], no_mesh_left: Callable[[], list[str]],
        tmp_path: Path) -> None:
    """A supervisor still waiting for a slow agent is alive: a second agp up on its run dir
    refuses, names it, and changes nothing."""
    env, gate, started = slow_env(tmp_path)
    config = write_config(tmp_path / "mesh.toml", module=SLOW_MODULE, env=env)
    run_dir = tmp_path / "run"
    first = supervisor(spawn, config, run_dir, ready=False)
    before = slow_agent_recorded(run_dir, started)
    out = agp("up", "--config", str(config), "--run-dir", str(run_dir))
    assert out.returncode == 1
    assert f"supervisor pid {first.pid}" in out.stderr
    assert "already" in out.stderr
    after = read_state(run_dir)
    assert after["supervisor"] == before["supervisor"]
    assert alive(after["processes"]) == alive(before["processes"]) == ["router", "echo-0"]
    gate.touch()  # let it finish starting; the first mesh then serves as usual
    first.wait_ready(60)
    assert len(list(started.iterdir())) == 1  # no second slow agent was started
    assert agp("down", "--run-dir", str(run_dir)).returncode == 0
    assert first.proc.wait(10) == 0
    assert no_mesh_left() == []


def test_a_supervisor_killed_while_starting_leaves_a_record(
        spawn: Callable[..., ManagedProcess], no_mesh_left: Callable[[], list[str]],
        tmp_path: Path) -> None:
    """kill -9 while an agent is still starting: what it had started is in the state file,
    so agp down stops it."""
    env, _gate, started = slow_env(tmp_path)
    config = write_config(tmp_path / "mesh.toml", module=SLOW_MODULE, env=env)
    run_dir = tmp_path / "run"
    first = supervisor(spawn, config, run_dir, ready=False)
    slow_agent_recorded(run_dir, started)
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert len(no_mesh_left()) == 2  # the router and the agent still starting
    out = agp("down", "--run-dir", str(run_dir), "--timeout", "10")
    assert out.returncode == 0, out.stderr
    assert no_mesh_left() == []


# ---------------------------------------------------------------------- down, in process
@pytest.fixture
def in_process(mesh_home: Home, tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """A Supervisor object in this process (to stop it at a chosen moment); ``down`` and a
    stop of anything still alive when the test ends."""
    sups: list[Supervisor] = []

    def make(**mesh: Any) -> Supervisor:
        cfg = parse_config({"mesh": {"router": "tcp://127.0.0.1:0", "pub": "tcp://127.0.0.1:0",
                                     "control_port": False, "registry": False,
                                     "run_dir": str(tmp_path / "run"), **mesh},
                            "agents": {"echo": {"module": "agents.echo",
                                                "namespace": "test/sup", "min": 1, "max": 2}}})
        sup = Supervisor(cfg)
        sups.append(sup)
        sup.up(timeout=30)
        return sup

    yield make
    for sup in sups:
        sup.down(timeout=5)
        for c in sup.children:
            if c.proc is not None:
                c.proc.stop(5)


def test_down_waits_for_a_replica_being_launched(in_process: Callable[..., Supervisor],
                                                 no_mesh_left: Callable[[], list[str]]
                                                 ) -> None:
    """A scaling thread is launching a replica (slowly) when down() runs: down must not
    return before that launch is over. Once down returns, `agp up` exits, and a launch
    still under way would leave its process running, unrecorded. (The launch, once it goes
    on, sees the stop and starts no process.)"""
    sup = in_process()
    spec = sup.config.agents[0]
    launching = threading.Event()
    down_returned = threading.Event()

    def slow_launch() -> ManagedProcess:
        launching.set()
        down_returned.wait(3.0)  # a slow launch: it goes on once down() returned, or in 3 s
        return sup.launch.agent(spec, "echo-1", sup.endpoint)

    child = sup._add(Child("echo-1", "agent", slow_launch, spec=spec))
    starter = threading.Thread(target=sup._start_new, args=(child,), daemon=True)
    starter.start()
    assert launching.wait(10)
    sup.down(timeout=10)
    still_starting = child.starting
    down_returned.set()
    starter.join(60)
    assert not still_starting, "down() returned while a replica was still being launched"
    assert child.proc is not None
    assert child.proc.pid == -1  # the stop came first: no process was started
    assert no_mesh_left() == []


def test_down_does_not_wait_out_a_restart_backoff(in_process: Callable[..., Supervisor],
                                                  no_mesh_left: Callable[[], list[str]]
                                                  ) -> None:
    """An agent crashing young is restarted after a backoff; a stop during that wait ends
    the wait, and down() does not take the restart for a launch still under way."""
    sup = in_process(restart_backoff=60.0, restart_backoff_max=60.0)
    echo = next(c for c in sup.children if c.name == "echo-0")
    first = echo.proc
    first.kill()  # the first crash is restarted at once
    sup.check(time.monotonic())
    wait_for(lambda: not echo.starting and echo.proc is not first and echo.proc.alive(), 30,
             message="echo-0 restarted")
    echo.proc.kill()  # a second crash within YOUNG seconds: restarted after the backoff
    sup.check(time.monotonic())
    assert echo.starting
    assert echo.delay == 60.0
    sup.down(timeout=5)
    assert not echo.starting
    assert not echo.proc.alive()
    assert no_mesh_left() == []



def test_up_refuses_while_another_up_holds_the_run_dir(
        no_mesh_left: Callable[[], list[str]], tmp_path: Path) -> None:
    """Two `agp up` at once: the state file names no live supervisor yet for either, so
    the run dir's lock decides; the second refuses and starts nothing."""
    import fcntl

    config = write_config(tmp_path / "mesh.toml")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "supervisor.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # an `agp up` starting
        out = agp("up", "--config", str(config), "--run-dir", str(run_dir))
    assert out.returncode == 1
    assert "another `agp up` is starting" in out.stderr
    assert read_state(run_dir) is None
    assert no_mesh_left() == []


def test_scale_down_never_retires_a_replica_that_is_restarting(
        in_process: Callable[..., Supervisor], no_mesh_left: Callable[[], list[str]]) -> None:
    """The newest replica is waiting out a restart backoff when the service is idle: the
    scale-down retires a settled one instead (retired mid-restart, the restarted process
    would come back unsupervised), and the restarting one is then launched as planned."""
    sup = in_process(restart_backoff=60.0, restart_backoff_max=60.0)
    spec = sup.config.agents[0]
    second = sup._new_replica(spec)
    sup._start_new(second)
    assert second.proc is not None
    assert second.proc.alive()
    first_proc = second.proc
    first_proc.kill()  # the first crash is restarted at once ...
    sup.check(time.monotonic())
    wait_for(lambda: not second.starting and second.proc is not first_proc
             and second.proc.alive(), 30, message="echo-1 restarted")
    second.proc.kill()  # ... a second one young waits out the backoff: it is "starting"
    sup.check(time.monotonic())
    assert second.starting
    wait_for(lambda: sup.mesh is not None, 10, message="the supervisor's mesh client")
    sup.policy.decide = lambda *a, **k: "down"  # type: ignore[method-assign]  # idle, say
    sup.scale(time.monotonic())
    retired = [c.name for c in sup.children if c.retiring]
    assert retired == ["echo-0"], retired
    assert not second.retiring
    sup.down(timeout=10)
    assert no_mesh_left() == []


def test_agp_up_serves_end_to_end_pub_sub(
        spawn: Callable[..., ManagedProcess], no_mesh_left: Callable[[], list[str]],
        mesh_home: Home, tmp_path: Path) -> None:
    """A secure mesh from `agp up` runs the topic key service beside the registry, so a
    sealed publish reaches a sealed subscriber (without it the publish found no key)."""
    from mesh import DeadlineExceeded, Mesh
    from security.home import enroll_identity

    config = tmp_path / "mesh.toml"
    config.write_text("""
[mesh]
router = "tcp://127.0.0.1:0"
pub = "tcp://127.0.0.1:0"
control_port = false
registry = true
""")
    run_dir = tmp_path / "run"
    sup = supervisor(spawn, config, run_dir)
    assert "keys" in alive(read_state(run_dir)["processes"])
    enroll_identity(mesh_home, "e2e-tester", roles=("admin",))
    endpoint = sup.ready_info["router"]
    with Mesh.connect(endpoint, identity="e2e-tester", e2e=True) as m:
        sub = m.subscribe("sealed.")
        sent = 0

        def heard() -> bool:  # publishes before the key service registered are dropped
            nonlocal sent
            sent += 1
            m.publish("sealed.t", {"n": sent})
            try:
                return bool(sub.get(timeout=0.5).data["n"] >= 1)
            except DeadlineExceeded:
                return False

        wait_for(heard, 30, interval=0.1, message="a sealed publish reached the subscriber")
    assert agp("down", "--run-dir", str(run_dir)).returncode == 0
    assert sup.proc.wait(10) == 0
    assert no_mesh_left() == []


if __name__ == "__main__":
    sys.exit(_slow_agent_main())
