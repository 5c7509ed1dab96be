"""A process that never says it is ready is not left running behind a failed start."""

from __future__ import annotations

import pytest

from agents.procs import ManagedProcess
from mesh.errors import DeadlineExceeded


def test_a_process_that_never_gets_ready_is_stopped_by_the_failed_start(tmp_path) -> None:
    proc = ManagedProcess("silent", ["-c", "import time; time.sleep(30)"], log_dir=tmp_path)
    try:
        with pytest.raises(DeadlineExceeded, match="no 'ready'"):
            proc.start(ready_timeout=1.0)
        assert not proc.alive()  # stopped by start itself, by its pid
        assert proc.proc is not None
        assert proc.proc.returncode is not None
    finally:
        proc.stop(timeout=5)


def test_the_start_time_on_record_is_the_childs_own_after_it_ended(tmp_path) -> None:
    """Read at spawn, while the child is ours: once it ended and was reaped its pid may be
    another process's, and a record naming that one's start time would have `agp down`
    stop it."""
    from mesh.process_identity import proc_starttime

    code = "import json; print(json.dumps({'event': 'ready'}), flush=True); input()"
    proc = ManagedProcess("short", ["-c", code], log_dir=tmp_path, stdin=True)
    try:
        proc.start(ready_timeout=30)
        own = proc_starttime(proc.pid)
        assert own is not None
        assert proc.starttime == own
    finally:
        proc.stop(timeout=5)
    assert not proc.alive()
    assert proc_starttime(proc.pid) != own  # gone (or another's now)
    assert proc.starttime == own  # what a state file written now records
