"""An inline or async handler raising ``SystemExit`` or ``KeyboardInterrupt``: that call's
HANDLER_ERROR, as a pool handler's is (``test_restart_running_calls``), not the end of the
agent's loop. A standalone agent stops on SIGINT/SIGTERM through the loop's signal handlers
(``agents.runner``), so what a handler raises is the handler's own failure.

A real router in a thread of this process; the agent and the client on the test's loop,
real sockets on loopback. Before the fix the exception left the handler and stopped that
loop: ``asyncio.run`` raised it, and the test turns that into a failure (a
``KeyboardInterrupt`` reaching pytest would end the whole session).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents.base import Agent, action
from agents.context import Context
from mesh import AsyncMesh
from mesh.errors import HandlerError
from tests.helpers import router_in_thread

SVC = "test/quits/quitter"
RAISED = {"exit": SystemExit, "interrupt": KeyboardInterrupt}


class Quitter(Agent):
    """``quit_inline`` (on the loop) and ``quit_async`` (a task) raise what they are told
    to; ``ping`` answers with the instance."""

    name = "quitter"
    namespace = "test/quits"
    register_with_registry = False
    direct_streams = False

    @action(name="quit_inline", inline=True)
    def quit_inline(self, data: Any, ctx: Context) -> Any:
        raise RAISED[data]("bye from inline")

    @action(name="quit_async")
    async def quit_async(self, data: Any, ctx: Context) -> Any:
        await asyncio.sleep(0)  # raised after a first step, from the task's own run
        raise RAISED[data]("bye from async")

    @action(inline=True)
    def ping(self, data: Any, ctx: Context) -> Any:
        return self.instance


@pytest.mark.parametrize("what", ["exit", "interrupt"])
@pytest.mark.parametrize("kind", ["inline", "async"])
def test_a_handler_raising_a_base_exception_fails_its_call_only(
        no_identity: None, kind: str, what: str) -> None:
    """The call hears HANDLER_ERROR with the exception's text, the failure is counted as a
    pool handler's is (``failed``, no drop), and the agent answers the next call."""
    async def main(endpoint: str) -> None:
        a = Quitter(endpoint=endpoint, instance="a", capacity=2)
        await a.start()
        serving = asyncio.ensure_future(a.serve())
        try:
            async with await AsyncMesh.connect(endpoint, breakers=False) as m:
                text = f"{RAISED[what].__name__}: bye from {kind}"
                with pytest.raises(HandlerError, match=text):
                    await m.request(SVC, f"quit_{kind}", what, timeout=5.0)
                assert await m.request(SVC, "ping", None, timeout=5.0) == "a"
                assert (a.failed, a.served) == (1, 1)
                assert a.dropped == {}
        finally:
            a.stop()
            await asyncio.wait_for(serving, 10)

    with router_in_thread() as r:
        try:
            asyncio.run(main(r.endpoint))
        except (SystemExit, KeyboardInterrupt) as exc:
            pytest.fail(f"{type(exc).__name__} left the {kind} handler and stopped the loop")
