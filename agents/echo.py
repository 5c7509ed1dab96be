"""echo: the smallest useful agent; the demo, the tests and the benchmark use it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from agents.base import Agent, Context, StreamIn, action


class Echo(Agent):
    """Echoes, sleeps, fails on request, and sums streams: one of each kind of handler."""

    name = "echo"
    capacity = 64

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorded: list[Any] = []

    @action(inline=True)
    def echo(self, data: Any, ctx: Context) -> Any:
        return data

    @action(inline=True)
    def whoami(self, data: Any, ctx: Context) -> Any:
        return {"instance": self.instance_name, "pid": os.getpid()}

    @action()
    async def sleep(self, data: Any, ctx: Context) -> Any:
        await asyncio.sleep(float(data))
        return {"slept": float(data), "instance": self.instance_name}

    @action()
    def work(self, data: Any, ctx: Context) -> Any:
        """A thread-pool handler that reports progress and honours cancellation."""
        steps = int(data.get("steps", 10))
        done = 0
        for i in range(steps):
            ctx.progress(i / steps, f"step {i}")
            ev = data.get("step_seconds", 0.01)
            ctx.wait_cancelled(ev)
            done += 1
        return {"steps": done, "instance": self.instance_name}

    @action(inline=True)
    def record(self, data: Any, ctx: Context) -> Any:
        """Fire-and-forget target: remember what arrived (bounded)."""
        if len(self.recorded) < 100_000:
            self.recorded.append(data)
        return None

    @action(inline=True)
    def recorded_items(self, data: Any, ctx: Context) -> Any:
        return list(self.recorded)

    @action(inline=True)
    def fail(self, data: Any, ctx: Context) -> Any:
        raise ValueError(f"asked to fail: {data!r}")

    @action(stream=True)
    async def ingest(self, chunks: StreamIn, ctx: Context) -> Any:
        count = 0
        size = 0
        digest = hashlib.sha256() if isinstance(ctx.params, dict) and ctx.params.get(
            "digest") else None
        kinds: set[str] = set()
        async for chunk in chunks.views():  # large chunks are read where libzmq put them
            count += 1
            data = chunk if isinstance(chunk, (bytes, memoryview)) else None
            size += 1 if data is None else len(data)
            if digest is not None:
                kinds.add(type(chunk).__name__)
                digest.update(b"" if data is None else data)
        out = {"chunks": count, "bytes": size, "instance": self.instance_name,
               "direct": chunks.direct}
        if digest is not None:  # params {"digest": true}: what arrived, for a test to check
            out.update(sha256=digest.hexdigest(), kinds=sorted(kinds))
        return out


if __name__ == "__main__":
    Echo.main()
