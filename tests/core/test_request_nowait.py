"""``AsyncMesh.request_nowait``: a Future per request, no coroutine or Task, between real
processes (router, echo agent, this test as the client)."""

from __future__ import annotations

import asyncio

import pytest

from mesh import AsyncMesh, ConfigError, DeadlineExceeded, HandlerError, NoSuchAction
from mesh.nowait import ReplyFuture

SVC = "test/ns/echo"


def test_many_requests_in_flight_each_future_gets_its_own_reply(router, start_echo) -> None:
    start_echo()

    async def main() -> list[object]:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            futures = [m.request_nowait(SVC, "echo", {"i": i}) for i in range(500)]
            futures.append(m.request_nowait(SVC, "echo", b"\x00raw", raw=True))
            assert all(isinstance(f, ReplyFuture) for f in futures)  # no Task each
            return await asyncio.gather(*futures)

    out = asyncio.run(main())
    assert out[:500] == [{"i": i} for i in range(500)]
    assert out[500] == b"\x00raw"


def test_errors_arrive_typed_in_the_future_and_a_bad_name_raises_at_once(
        router, start_echo) -> None:
    start_echo()

    async def main() -> None:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            with pytest.raises(HandlerError, match="asked to fail"):
                await m.request_nowait(SVC, "fail", "poison")
            with pytest.raises(NoSuchAction):
                await m.request_nowait(SVC, "no_such_action")
            with pytest.raises(DeadlineExceeded):
                await m.request_nowait(SVC, "sleep", 5.0, timeout=0.3)
            with pytest.raises(ConfigError):
                m.request_nowait("", "echo")  # refused before anything is sent
            assert await m.request_nowait(SVC, "echo", 7) == 7  # the client carries on

    asyncio.run(main())


def test_cancelling_the_future_stops_the_call_at_the_agent(router, start_echo) -> None:
    """With room for one call, a cancelled 50-second call must free it: the next request
    is answered within its 5-second budget only if the agent heard the cancel."""
    start_echo(capacity=1)

    async def main() -> object:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            loop = asyncio.get_running_loop()
            long = m.request_nowait(SVC, "work", {"steps": 1000, "step_seconds": 0.05})
            deadline = loop.time() + 10
            # its first progress report names the instance a cancel goes to
            while not any(p.instance for p in m.core.pending.values()):
                assert loop.time() < deadline, "no progress report from the instance"
                await asyncio.sleep(0.01)
            assert long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            return await m.request(SVC, "echo", "after", timeout=5)

    assert asyncio.run(main()) == "after"


def test_a_call_cancelled_before_any_word_from_its_instance_is_stopped_too(
        router, start_echo) -> None:
    """No progress report yet, so the client cannot name the instance: the router finds the
    call by its service. With room for one call, the next request is answered in time only
    if the cancelled one stopped."""
    start_echo(capacity=1)

    async def main() -> object:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            first = m.request_nowait(SVC, "sleep", 50)
            assert await m.request("agp/router", "ping") == "pong"  # it reached the router
            assert first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            return await m.request(SVC, "echo", "after", timeout=5)

    assert asyncio.run(main()) == "after"


def test_a_call_cancelled_while_it_waits_in_the_routers_queue_never_runs(
        router, start_echo) -> None:
    start_echo(capacity=1)

    async def main() -> object:
        async with await AsyncMesh.connect(router.ready_info["router"]) as m:
            busy = m.request_nowait(SVC, "sleep", 50)
            queued = m.request_nowait(SVC, "sleep", 50)  # no room: it waits at the router
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:  # until the router holds it queued
                services = await m.request("agp/router", "services")
                if any(s["service"] == SVC and s["queued"] == 1 for s in services):
                    break
                assert loop.time() < deadline, "the second call was never queued"
                await asyncio.sleep(0.01)
            for call in (queued, busy):  # the queued one first: it must not take the slot
                assert call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            return await m.request(SVC, "echo", "after", timeout=5)

    assert asyncio.run(main()) == "after"
