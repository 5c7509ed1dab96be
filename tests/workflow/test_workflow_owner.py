"""Owner ids and liveness: a later process with the same pid (a container restart, pid
reuse) is a different owner, so the runs of the dead one are resumed, not left forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from mesh.workflow import owner_alive, process_owner

REPO = Path(__file__).resolve().parents[2]
CHILD = ("import sys; from mesh.workflow import process_owner; "
         "print(process_owner(), flush=True); sys.stdin.read()")


def test_this_process_is_alive_under_its_own_nonce_only() -> None:
    me = process_owner()
    host, pid, nonce = me.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert nonce
    assert process_owner() == me  # stable within the process
    assert owner_alive(me)
    # the same host and pid under another nonce: an earlier incarnation (a restart)
    assert not owner_alive(f"{host}:{pid}:0-deadbeef")
    assert not owner_alive(f"{host}:{pid}")  # an id written before nonces: also earlier


def test_a_live_process_here_is_alive_until_it_exits_and_a_reused_pid_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        theirs = child.stdout.readline().decode().strip()
        host, pid, nonce = theirs.rsplit(":", 2)
        assert int(pid) == child.pid
        assert owner_alive(theirs)
        started, _, rand = nonce.rpartition("-")
        assert started.isdigit(), "the nonce carries the process start time on Linux"
        # that pid, but a process started at another time: the pid was reused
        assert not owner_alive(f"{host}:{pid}:{int(started) + 1}-{rand}")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert not owner_alive(theirs)


def test_other_hosts_are_assumed_alive_and_no_owner_is_dead() -> None:
    assert owner_alive("another-host.example:1:123-abc")  # not knowable from here
    assert owner_alive("another-host.example:4242")
    assert not owner_alive("not-a-process-id")
    assert not owner_alive(None)
    assert not owner_alive("")
