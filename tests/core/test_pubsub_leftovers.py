"""Client pub/sub leftovers: what a subscribe leaves behind when its caller gives up after
the router confirmed it (an e2e client still fetching the topic's key)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mesh.aio import AsyncMesh
from tests.helpers import until
from tests.security.sealed_mesh import secure_router_thread

TOPIC = "news.world"


async def _cancel_while_the_key_is_fetched(router: Any) -> None:
    async with await AsyncMesh.connect(router.endpoint, e2e=True) as m:
        crypto = m.core.subs.crypto
        assert crypto is not None
        task = asyncio.create_task(m.subscribe(TOPIC))
        # one loop turn at a time: the fetch is in flight only for a round trip or two
        deadline = time.monotonic() + 15.0
        while (TOPIC, "subscribe") not in crypto._fetching and not task.done():
            assert time.monotonic() < deadline, "the topic key fetch never started"
            await asyncio.sleep(0)
        assert not task.done(), "subscribe returned before its key fetch was seen"
        assert TOPIC.encode() in m.core.subs.subs  # confirmed: only the prefetch is left
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert TOPIC.encode() not in m.core.subs.subs  # nobody could ever close it
        await until(lambda: router.proxy.subscriptions == 0, timeout=15.0,
                    what="the router dropped the cancelled subscription")  # client still up


def test_a_subscribe_cancelled_during_its_key_prefetch_unsubscribes(mesh_home):
    with secure_router_thread() as r:  # no key service: the fetch is refused, cancel wins
        asyncio.run(_cancel_while_the_key_is_fetched(r))
