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
