"""Helpers shared by the workflow tests (conftest keeps the fixtures)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
DEADLINE = 30.0  # generous: tests run beside others on 2 cores


def run_async(coro: Awaitable[T], *, timeout: float = DEADLINE) -> T:
    """Run a coroutine on a fresh loop with an overall deadline, so a hang fails fast."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(cond: Callable[[], Any], *, timeout: float = DEADLINE, what: str = "") -> None:
    """Wait until ``cond()`` is true, polling the loop, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)
