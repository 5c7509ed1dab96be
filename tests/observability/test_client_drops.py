"""What a client discards is counted by reason and exported: undecodable pub/sub messages,
messages a subscription's callback raised on, and the core's own counters."""

from __future__ import annotations

import asyncio

import pytest

from mesh import AsyncMesh, metrics
from mesh.wire import Cmd, pack_route
from tests.observability.test_metrics import value

TOPIC = "drops.test"


def test_unreadable_and_callback_failed_messages_are_counted_by_reason(
        router, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = metrics.ClientStats()
    monkeypatch.setattr(metrics, "CLIENT", stats)  # as enable_client_metrics() would
    endpoint = router.ready_info["router"]

    async def main() -> tuple[dict, int, int]:
        pub = await AsyncMesh.connect(endpoint)
        sub_client = await AsyncMesh.connect(endpoint)
        try:
            assert sub_client in stats.clients  # tracked from connect, before any request
            good: list[object] = []
            all_in = asyncio.Event()

            def on_message(msg) -> None:
                if msg.data == "raise":
                    raise RuntimeError("a handler bug")
                good.append(msg.data)
                if msg.data == "last":
                    all_in.set()

            sub = await sub_client.subscribe(TOPIC, on_message)
            # one PUBLISH carrying one message whose payload is no msgpack (0xc1 never is),
            # sent at once: it goes before the publishes below, which wait for the turn's end
            pub.core.send_frames([pack_route(Cmd.PUBLISH, 0, 0, 1, 0), TOPIC.encode(), b"",
                                  b"\xc1"])
            pub.publish(TOPIC, "raise")
            pub.publish(TOPIC, "raise")
            pub.publish(TOPIC, "last")
            await asyncio.wait_for(all_in.wait(), 10)
            assert good == ["last"]
            fams = {f.name: f for f in stats.collect()}
            return fams, sub.callback_errors, sub.refused.get("malformed", 0)
        finally:
            await pub.close()
            await sub_client.close()

    fams, callback_errors, refused = asyncio.run(main())
    assert callback_errors == 2
    assert refused == 1
    assert value(fams, "agp_client_subscription_dropped_total", topic=TOPIC,
                 reason="callback_error") == 2
    assert value(fams, "agp_client_pubsub_unopened_total", reason="malformed") == 1
    # the core's counters without a metric of their own are reasons of one family
    assert value(fams, "agp_client_dropped_total", reason="malformed") == 0
    assert value(fams, "agp_client_dropped_total", reason="send_errors") == 0
