"""Run each side of a benchmark scenario in its own process.

Why processes: the client, broker and worker of a real deployment do not share a GIL, so a
benchmark that put them in threads would measure Python's lock, not the mesh. Each side is
forked from multiprocessing's fork server, a clean process (no sockets, no threads of the
parent) that imported zmq, numpy and the mesh once: a side starts in milliseconds instead
of re-importing them (~0.4 s a side, a hundred sides a run). It tells the parent it is
ready over a pipe (no sleeps), is told to stop through an Event, and also ends itself at its
own deadline. The parent joins with a timeout, then terminates, then kills, by pid, only
the children it started: cleanup never hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, Final

#: How long a side may take to start (import zmq, numpy; bind) before it is declared dead.
READY_TIMEOUT: Final = 30.0
#: Hard cap on any one side's life, whatever the caller asks.
MAX_RUN: Final = 600.0
_JOIN_GRACE: Final = 2.0

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["zmq", "msgpack", "numpy", "nacl.bindings", "uvloop", "mesh.aio",
                             "agents.echo", "router.server", "security.server",
                             "discovery.service", "security.key_service",
                             "bench.mesh_scenarios", "bench.raw_reqrep", "bench.raw_flow"])
# glibc's malloc tunables that bench sides set (what MALLOC_*_ would set at exec)
_MALLOPT: Final = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}


class ChildError(RuntimeError):
    """A side failed: raised in the parent with the child's traceback or exit code."""


class Control:
    """The child's end: say ready, send notes, receive messages, know when to stop."""

    def __init__(self, conn: Connection, stop: Any, max_run: float) -> None:
        self._conn = conn
        self._stop = stop
        self.deadline = time.monotonic() + max_run

    def ready(self, info: Any = None) -> None:
        """Tell the parent this side is up; ``info`` is e.g. the endpoints it bound."""
        self._conn.send(("ready", info))

    def note(self, info: Any = None) -> None:
        """Send an intermediate event to the parent (e.g. 'saw the first probe')."""
        self._conn.send(("note", info))

    def receive(self, timeout: float) -> Any | None:
        """Next message from the parent, or None after ``timeout`` seconds."""
        if self._conn.poll(max(0.0, timeout)):
            return self._conn.recv()
        return None

    def pending(self) -> bool:
        """A parent message is waiting (non-blocking)."""
        return self._conn.poll(0)

    def should_stop(self) -> bool:
        """The parent asked to stop, or this side's deadline has passed."""
        return self._stop.is_set() or time.monotonic() >= self.deadline

    def wait_stop(self, timeout: float) -> bool:
        """Block until the parent asks to stop (True) or ``timeout`` passes (False)."""
        return bool(self._stop.wait(max(0.0, timeout)))

    def remaining(self) -> float:
        """Seconds left before this side's deadline."""
        return max(0.0, self.deadline - time.monotonic())


def _apply_env(env: Mapping[str, str | None]) -> None:
    """Set (value) or unset (None) variables in this side; malloc's tunables through
    ``mallopt``, since glibc reads MALLOC_*_ only at exec and a forked side never execs."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
            if k in _MALLOPT:
                import ctypes

                ctypes.CDLL("libc.so.6").mallopt(_MALLOPT[k], int(v))


def _entry(
    conn: Connection,
    stop: Any,
    max_run: float,
    env: Mapping[str, str | None],
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    _apply_env(env)
    ctl = Control(conn, stop, max_run)
    try:
        result = target(ctl, *args, **kwargs)
        conn.send(("result", result))
    except BaseException:  # report everything to the parent, then exit non-zero
        try:
            conn.send(("error", traceback.format_exc()))
        finally:
            raise
    finally:
        conn.close()


class Child:
    """The parent's handle on one side."""

    def __init__(self, name: str, process: Any, conn: Connection, stop: Any) -> None:
        self.name = name
        self.process = process
        self._conn = conn
        self._stop = stop
        self._result: Any = None
        self._has_result = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _next(self, timeout: float) -> tuple[str, Any]:
        if not self._conn.poll(max(0.0, timeout)):
            if not self.process.is_alive():
                raise ChildError(f"{self.name} exited with code {self.process.exitcode}")
            raise ChildError(f"{self.name}: nothing within {timeout:.1f}s")
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self.process.join(_JOIN_GRACE)
            raise ChildError(f"{self.name} exited with code {self.process.exitcode}")
        if kind == "error":
            raise ChildError(f"{self.name} failed:\n{info}")
        if kind == "result":
            self._result, self._has_result = info, True
        return kind, info

    def expect(self, kind: str, timeout: float) -> Any:
        """Wait for the next message, which must be of ``kind``; return its payload."""
        got, info = self._next(timeout)
        if got != kind:
            raise ChildError(f"{self.name}: expected {kind!r}, got {got!r}")
        return info

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Any:
        """Block until the side says it is ready; return what it reported."""
        return self.expect("ready", timeout)

    def send(self, message: Any) -> None:
        """Send a message to the side (e.g. 'go')."""
        self._conn.send(message)

    def result(self, timeout: float) -> Any:
        """Wait for the side's return value (skipping notes)."""
        end = time.monotonic() + timeout
        while not self._has_result:
            self._next(end - time.monotonic())
        return self._result

    def request_stop(self) -> None:
        """Ask the side to stop (it polls the Event in its loop)."""
        self._stop.set()

    def close(self, timeout: float = _JOIN_GRACE) -> None:
        """Stop, join; then terminate, then kill this one pid. Never hangs."""
        self._stop.set()
        p = self.process
        p.join(timeout)
        if p.is_alive():
            p.terminate()
            p.join(_JOIN_GRACE)
        if p.is_alive():
            p.kill()
            p.join(_JOIN_GRACE)
        self._conn.close()


class Group:
    """Every side of one scenario; closing the group closes each child, newest first."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def spawn(
        self,
        name: str,
        target: Callable[..., Any],
        *args: Any,
        env: Mapping[str, str | None] | None = None,
        max_run: float = 60.0,
        **kwargs: Any,
    ) -> Child:
        """Start ``target(ctl, *args, **kwargs)`` in a new process.

        ``target`` must be a module-level function (spawn pickles it by name). The child
        ends itself after ``max_run`` seconds (capped at :data:`MAX_RUN`).
        """
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        stop = _CTX.Event()
        run = min(max(0.1, max_run), MAX_RUN)
        proc = _CTX.Process(
            target=_entry,
            name=f"bench-{name}",
            args=(child_conn, stop, run, dict(env or {}), target, args, kwargs),
            daemon=True,
        )
        proc.start()
        child_conn.close()
        child = Child(name, proc, parent_conn, stop)
        self.children.append(child)
        return child

    def close(self) -> None:
        """Stop and reap each, newest first (bounded): the sides a side depends on are still
        up while it says goodbye (an agent deregisters from a registry that still answers),
        so none waits out a timeout."""
        for c in reversed(self.children):
            c.close()
        self.children.clear()

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
