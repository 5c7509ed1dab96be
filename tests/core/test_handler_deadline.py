"""Why an async handler stopped is told by who stopped it, not read off the clock: the
loop's timers may fire a little before the deadline (uvloop rounds them to the
millisecond), and the caller must still hear DEADLINE_EXCEEDED, not CANCELLED."""

from __future__ import annotations

import asyncio

from agents.context import Context
from agents.echo import Echo
from mesh.errors import ErrorCode
from mesh.wire import Cmd, pack_route
from proto import agp_pb2


def _agent_telling(codes: list[int]) -> Echo:
    """An Echo on the running loop, with no connection: the error codes it sends go to
    ``codes``."""
    agent = Echo(endpoint="tcp://127.0.0.1:1", namespace="test/deadline")
    agent.loop = asyncio.get_running_loop()
    agent._error = lambda crid, ident, code, message, details=None: codes.append(code)
    return agent


def _serve_until_stopped(stop: str) -> list[int]:
    """Run Echo's ``sleep`` handler under a 60 s deadline; stop it by its deadline timer
    firing early ("deadline") or by the caller's CANCEL ("caller"); the error codes sent."""
    codes: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        agent = _agent_telling(codes)
        ctx = Context(agent, b"client", 7, "sleep", loop.time() + 60.0, agp_pb2.Envelope())
        started = asyncio.Event()

        async def handler() -> object:  # Echo's sleep, telling us when it has begun
            started.set()
            return await agent.sleep(30.0, ctx)

        task = loop.create_task(agent._run_async(handler(), ctx, True))
        await asyncio.wait_for(started.wait(), timeout=5)  # the handler is sleeping now
        if stop == "deadline":
            agent._expire(task, ctx)  # the timer, 60 s early: the clock says not yet
        else:
            task.cancel()
        await task

    asyncio.run(main())
    return codes


def test_a_deadline_timer_that_fires_early_still_reads_as_deadline_exceeded() -> None:
    assert _serve_until_stopped("deadline") == [ErrorCode.DEADLINE_EXCEEDED]


def test_a_callers_cancel_reads_as_cancelled() -> None:
    assert _serve_until_stopped("caller") == [ErrorCode.CANCELLED]


def test_a_cancel_that_comes_before_the_handler_ran_is_still_answered() -> None:
    """REQUEST and CANCEL in one batch: the handler's task is cancelled before its first
    step, so its wrapper never runs; the call must still be answered CANCELLED, or its slot
    at the router stays taken until the call's deadline."""
    codes: list[int] = []

    async def main() -> None:
        agent = _agent_telling(codes)
        header = agp_pb2.Envelope(action="sleep").SerializeToString()
        agent._on_inbound(Cmd.REQUEST, 0, 60_000, 7,
                          [pack_route(Cmd.REQUEST, 0, 0, 60_000, 7), b"client", header,
                           b"\xcb@>\x00\x00\x00\x00\x00\x00"])  # msgpack 30.0: sleep 30 s
        agent._on_inbound(Cmd.CANCEL, 0, 0, 7, [pack_route(Cmd.CANCEL, 0, 0, 0, 7),
                                                b"client", b""])
        for _ in range(10):  # a few turns of the loop: the cancel settles at once
            await asyncio.sleep(0)
        assert not agent._tasks  # nothing left running or held

    asyncio.run(main())
    assert codes == [ErrorCode.CANCELLED]
