"""Shared test helpers: wait on a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")
        time.sleep(interval)
        last = condition()
    return last


async def until(condition: Callable[[], T], timeout: float = 10.0,
                what: str = "condition") -> T:
    """:func:`wait_for` on an event loop: poll ``condition`` without blocking the loop (it
    may be what makes the condition come true); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)
    return value


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def router_in_thread(join_timeout: float = 10.0, **config: Any) -> Iterator[Any]:
    """An insecure router on ephemeral loopback ports (``config``: other RouterConfig
    fields), run on a thread of this process; stopped (and its thread joined) on exit.

    Meanwhile this process has no default identity: the scenario tests' shared mesh sets
    AGP_IDENTITY for the whole session, and a client that took it would speak CURVE to a
    router that answers only plain connections."""
    from router.config import RouterConfig
    from router.server import Router

    identity = os.environ.pop("AGP_IDENTITY", None)
    r = Router(RouterConfig(**{"bind": "tcp://127.0.0.1:0", "pub_bind": "tcp://127.0.0.1:0",
                               **config}))
    r.start()
    thread = threading.Thread(target=r.run, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.stop()
        thread.join(join_timeout)
        if identity is not None:
            os.environ["AGP_IDENTITY"] = identity
        assert not thread.is_alive(), "the router thread did not stop"
