"""The open-loop client's pacer: a timerfd wakes the loop at each period, never before the
start, and stops when closed."""

from __future__ import annotations

import asyncio
import time

from bench.pacer import Pacer


def test_the_pacer_ticks_from_its_start_and_stops_when_closed() -> None:
    async def main() -> tuple[list[int], int, int]:
        loop = asyncio.get_running_loop()
        ticks: list[int] = []
        enough = asyncio.Event()

        def tick() -> None:
            ticks.append(time.perf_counter_ns())
            if len(ticks) >= 20:
                enough.set()

        start = time.perf_counter_ns() + 20_000_000
        pacer = Pacer(loop, start, 1_000_000, tick)
        await asyncio.wait_for(enough.wait(), timeout=10)
        pacer.close()
        seen = len(ticks)
        await asyncio.sleep(0.05)  # ticks would have come in this time, had it not closed
        return ticks, start, seen

    ticks, start, seen = asyncio.run(main())
    assert ticks[0] >= start  # not before its first intended time
    assert ticks == sorted(ticks)
    assert len(ticks) == seen  # nothing after close
