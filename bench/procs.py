"""Run each side of a benchmark scenario in its own process.

Why processes: the client, broker and worker of a real deployment do not share a GIL, so a
benchmark that put them in threads would measure Python's lock, not the mesh. Each side is
started with the 'spawn' method (no inherited sockets or threads), tells the parent it is
ready over a pipe (no sleeps), is told to stop through an Event, and also ends itself at its
own deadline. The parent joins with a timeout, then terminates, then kills, by pid, only
the children it started: cleanup never hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, Final

#: How long a side may take to start (import zmq, numpy; bind) before it is declared dead.
READY_TIMEOUT: Final = 30.0
#: Hard cap on any one side's life, whatever the caller asks.
MAX_RUN: Final = 600.0
_JOIN_GRACE: Final = 2.0

_CTX = mp.get_context("spawn")
_ENV_LOCK = threading.Lock()


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


def _entry(
    conn: Connection,
    stop: Any,
    max_run: float,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
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


@contextmanager
def _patched_env(env: Mapping[str, str | None] | None) -> Iterator[None]:
    """Set (value) or unset (None) variables only while a child is being spawned.

    glibc reads MALLOC_* at process start, so the only way to give one child a different
    allocator setting is its environment at exec time.
    """
    if not env:
        yield
        return
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        try:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


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
            args=(child_conn, stop, run, target, args, kwargs),
            daemon=True,
        )
        with _patched_env(env):
            proc.start()
        child_conn.close()
        child = Child(name, proc, parent_conn, stop)
        self.children.append(child)
        return child

    def close(self) -> None:
        """Ask all to stop at once, then reap each (bounded)."""
        for c in self.children:
            c.request_stop()
        for c in reversed(self.children):
            c.close()
        self.children.clear()

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
