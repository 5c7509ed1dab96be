"""A child that writes JSON lines on stdout for as long as it runs (structured logs, say)
does not grow the supervisor's memory: ManagedProcess keeps at most EVENTS_KEPT events no
one has waited for, and counts the rest as dropped. The log still has every line, and a
wait still learns that the child exited."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.procs import EVENTS_KEPT, ManagedProcess
from mesh.errors import Unavailable
from tests.helpers import wait_for

CHATTY = """
import json, sys
print(json.dumps({"event": "ready"}))  # then a burst, in the same write
for n in range(%d):
    print(json.dumps({"event": "log", "n": n}))
sys.stdout.flush()
sys.stdin.read()  # then stays up until stopped
"""


def test_json_lines_nobody_waits_for_are_not_kept_forever(tmp_path: Path) -> None:
    lines = EVENTS_KEPT * 4
    proc = ManagedProcess("chatty", ["-c", CHATTY % lines], log_dir=tmp_path, stdin=True)
    try:
        proc.start(30)  # the ready line is not pushed out by the burst behind it
        log = tmp_path / "chatty.log"
        wait_for(lambda: log.read_text().count("\n") == lines + 1, 30,
                 message="every line in the log")  # (written before it is queued)
        assert proc._events.qsize() <= EVENTS_KEPT  # before: every line, for ever
        wait_for(lambda: proc._events.qsize() + proc.dropped_events == lines, 10,
                 message="every line queued or counted as dropped")
        assert proc.dropped_events >= lines - EVENTS_KEPT
        proc.kill()  # its exit is queued even so: a wait learns it
        assert proc.wait_event("log", 5, n=0)["n"] == 0  # the oldest unread are kept
        with pytest.raises(Unavailable, match="exited"):
            proc.wait_event("log", 5, n=lines - 1)
    finally:
        proc.stop(5)
