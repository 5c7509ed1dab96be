"""Scenario sides in child processes: ready handshake, results, errors, cleanup by pid."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench.procs import ChildError, Control, Group


def _echo_side(ctl: Control, greeting: str) -> dict[str, Any]:
    ctl.ready({"pid": os.getpid(), "greeting": greeting})
    msg = ctl.receive(10.0)
    ctl.note("got it")
    return {"echo": msg, "env": os.environ.get("BENCH_PROCS_TEST")}


def _failing_side(ctl: Control) -> None:
    ctl.ready()
    raise ValueError("boom in the child")


def _stubborn_side(ctl: Control) -> None:
    """Ignores the stop Event: only terminate/kill ends it."""
    ctl.ready(os.getpid())
    ctl.receive(3600.0)


def _deadline_side(ctl: Control) -> str:
    ctl.ready()
    while not ctl.should_stop():  # ends itself at its own deadline
        ctl.wait_stop(0.05)
    return "stopped"


def test_ready_message_result_and_env() -> None:
    with Group() as g:
        c = g.spawn("echo", _echo_side, "hi", env={"BENCH_PROCS_TEST": "yes"}, max_run=20)
        info = c.wait_ready()
        assert info["greeting"] == "hi"
        assert info["pid"] == c.pid != os.getpid()
        c.send("ping")
        assert c.result(10.0) == {"echo": "ping", "env": "yes"}
    assert "BENCH_PROCS_TEST" not in os.environ  # only the child saw it


def test_child_error_carries_traceback() -> None:
    with Group() as g:
        c = g.spawn("bad", _failing_side, max_run=20)
        c.wait_ready()
        with pytest.raises(ChildError, match="boom in the child"):
            c.result(10.0)


def test_close_kills_a_child_that_ignores_stop() -> None:
    with Group() as g:
        c = g.spawn("stubborn", _stubborn_side, max_run=60)
        pid = c.wait_ready()
        t = time.monotonic()
        c.close(timeout=0.2)
        assert time.monotonic() - t < 10.0
        assert not c.process.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_side_ends_itself_at_its_deadline() -> None:
    with Group() as g:
        c = g.spawn("short", _deadline_side, max_run=0.3)
        c.wait_ready()
        assert c.result(15.0) == "stopped"


def test_expect_reports_the_wrong_message() -> None:
    with Group() as g:
        c = g.spawn("echo", _echo_side, "x", max_run=20)
        with pytest.raises(ChildError, match="expected 'note'"):
            c.expect("note", 30.0)
