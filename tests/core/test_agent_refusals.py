"""An agent process refuses what it cannot read: answered with a typed error, counted by
reason in its metrics, and the slot the call held at the router freed at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh import AsyncMesh, Malformed
from mesh.nowait import ReplyFuture, ReplyWaiter
from mesh.replies import decode_reply
from mesh.wire import Cmd, Flag
from tests.helpers import wait_for
from tests.observability.test_metrics import scrape, value

SVC = "test/ns/echo"


def _garbage_request(m: AsyncMesh, header: bytes, timeout: float) -> ReplyFuture:
    """A request whose envelope (the header frame) no protobuf parser can read."""
    future = ReplyFuture(loop=asyncio.get_running_loop())
    m.core.start_request(Cmd.REQUEST, SVC.encode(), header, [b"x"],
                         ReplyWaiter(future, decode_reply, None, None, SVC),
                         flags=Flag.RAW, timeout=timeout)
    return future


def _dropped(port: int, reason: str) -> float:
    try:
        return value(scrape(port), "agp_agent_dropped_total", reason=reason)
    except KeyError:  # not counted yet
        return 0.0


def test_undecodable_envelope_is_answered_malformed_counted_and_frees_the_slot(
        router, start_echo) -> None:
    agent = start_echo(capacity=1, extra=["--metrics-port", "0"])
    port = agent.ready_info["metrics_port"]

    async def main() -> float:
        m = await AsyncMesh.connect(router.ready_info["router"])
        try:
            assert await m.request(SVC, "echo", 1) == 1
            t0 = time.monotonic()
            with pytest.raises(Malformed, match="undecodable envelope"):
                # 0xff: a field number of 31 with wire type 7, which does not exist
                await _garbage_request(m, b"\xff\xff\xff", timeout=20)
            answered_in = time.monotonic() - t0
            # capacity 1: had the garbage kept its slot, this would wait out its deadline
            assert await m.request(SVC, "echo", 2, timeout=5) == 2
            return answered_in
        finally:
            await m.close()

    answered_in = asyncio.run(main())
    assert answered_in < 5  # an answer, not the 20 s deadline
    wait_for(lambda: _dropped(port, "malformed_envelope") == 1, timeout=10,
             message="the refusal counted by reason")
