"""A client's direct stream links live as long as their streams (plus a short idle time):
a long-lived client streaming to agents that come and go (each restart binds a new random
port) must not keep a socket, a reader and a reconnecting CURVE connection per endpoint it
ever used (mesh/direct.py ``DirectLinks``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh import AsyncMesh

SVC = "test/ns/echo"
CHUNK = bytes(64 * 1024)


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Wait on the running loop (which must keep turning) until ``condition()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)  # lets the loop run; the condition is the sync point


async def stream_to(m: AsyncMesh, dest: str, chunks: int) -> dict:
    async with m.stream(dest, "ingest") as s:
        for _ in range(chunks):
            await s.write(CHUNK, raw=True)
    return s.result


def test_a_link_closes_when_its_last_stream_ends_and_the_next_stream_makes_a_new_one(
        router, start_echo) -> None:
    start_echo()

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            links = m.core.direct_links()
            links.idle = 0.0  # close as soon as no stream uses it
            # two streams share one link; the short one ends first, and the long one
            # still gets its credits over the link for many windows after that
            short = await m.stream(SVC, "ingest").open()
            long = await m.stream(SVC, "ingest").open()
            assert short.direct
            assert long.direct
            assert len(links.socks) == 1
            first = next(iter(links.socks.values()))
            await short.write(CHUNK, raw=True)
            assert (await short.close())["chunks"] == 1
            for _ in range(200):
                await long.write(CHUNK, raw=True)
            assert len(links.socks) == 1  # still in use: not closed under the long stream
            assert (await long.close())["chunks"] == 200

            await until(lambda: not links.socks, "the idle link closed")
            assert first.closed
            assert links.closed_links == 1
            assert not links._users
            assert not links._link_of

            result = await stream_to(m, SVC, 30)  # a new link is made for the next stream
            assert result["direct"] is True
            assert result["chunks"] == 30
            await until(lambda: not links.socks, "the second link closed")
            assert links.closed_links == 2
            assert m.core.counters.get("direct_malformed", 0) == 0

    asyncio.run(main())


def test_consecutive_streams_within_the_idle_time_reuse_the_link(router, start_echo) -> None:
    start_echo()

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            links = m.core.direct_links()
            links.idle = 60.0
            seen = []
            for _ in range(3):
                s = await m.stream(SVC, "ingest").open()
                seen.append(s._sock)
                await s.write(CHUNK, raw=True)
                assert (await s.close())["direct"] is True
            assert seen[0] is seen[1] is seen[2]  # one CURVE handshake for the three
            assert len(links.socks) == 1
            assert links.closed_links == 0

    asyncio.run(main())


def test_links_to_agents_that_came_and_went_do_not_pile_up(router, start_echo) -> None:
    """Each agent restart binds a new port: the client ends up holding no socket for any
    old endpoint (before, one socket per endpoint ever used, reconnecting for ever)."""

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            links = m.core.direct_links()
            links.idle = 0.2
            endpoints = set()
            for round_ in range(3):
                agent = await asyncio.to_thread(start_echo, instance=f"gone{round_}")
                result = await stream_to(m, f"{SVC}/gone{round_}", 5)
                assert result["direct"] is True
                assert result["instance"] == f"{SVC}/gone{round_}"
                endpoints.update(ep for ep, _ in links.socks)
                await asyncio.to_thread(agent.stop)
                await until(lambda: not links.socks, f"round {round_}: the link closed")
            assert len(endpoints) == 3  # three agents, three endpoints, all let go
            assert links.closed_links == 3

    asyncio.run(main())
