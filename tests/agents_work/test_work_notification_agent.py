"""The notification agent's lifecycle: stage notifiers released, sinks closed off the loop.

The agent is built but never connected: its stage function, ``stage_stopped`` and
``on_stop`` are driven directly, with a real webhook server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time

from agents.common import TopicStage
from agents.notification import Notification
from agents.work.alerts import Alert, WebhookSink
from mesh.pubsub import Message
from tests.agents_work.test_work_alerts import Hook, hook  # noqa: F401  (the fixture)
from tests.helpers import wait_for


def _offline() -> Notification:
    return Notification(endpoint="tcp://127.0.0.1:1")


def test_a_stopped_stage_releases_its_notifier_and_keeps_its_counts() -> None:
    agent = _offline()
    for i in range(3):
        process = agent.make_stage({"publish": "alerts.t.", "kinds": ["up"]})
        stage = TopicStage(agent, f"s{i}", "predictions.t.", process)
        out = stage._process([Message("predictions.t.A", {
            "symbols": ["A"], "probabilities": [0.95], "timestamps": [1.0]})])
        assert len(out) == 1
        assert len(agent.stage_notifiers) == 1
        agent.stage_stopped(stage)
    assert agent.stage_notifiers == {}
    assert agent.extra_stats()["alerts"]["sent"] == 3  # the stopped stages' alerts still count


def test_on_stop_closes_a_busy_webhook_without_blocking_the_loop(hook: Hook) -> None:  # noqa: F811
    agent = _offline()
    sink = WebhookSink(hook.url, timeout=10)
    agent.sinks = [sink]
    hook.release.clear()  # the server holds the POST until released
    sink.emit(Alert("A", "up", 0.9, 1.0))
    assert hook.got.acquire(timeout=10)  # the worker is inside the POST now

    async def main() -> tuple[float, bool]:
        stop = asyncio.create_task(agent.on_stop())
        t0 = time.monotonic()
        for _ in range(3):
            await asyncio.sleep(0)  # loop steps: on_stop runs, and must hand the loop back
        step = time.monotonic() - t0
        closing = not stop.done()
        hook.release.set()
        await asyncio.wait_for(stop, 15)
        return step, closing

    step, closing = asyncio.run(main())
    assert closing  # the close waited for the POST in a thread...
    assert step < 1.0  # ...while the loop ran on (it was blocked for seconds before)
    assert sink.sent == 1


def test_alerts_still_queued_when_a_webhook_close_times_out_are_counted(
        hook: Hook) -> None:  # noqa: F811
    sink = WebhookSink(hook.url, timeout=10, max_queue=10)
    hook.release.clear()
    sink.emit(Alert("A", "up", 0.9, 1.0))
    assert hook.got.acquire(timeout=10)  # A is being posted (held); B and C wait behind it
    sink.emit(Alert("B", "up", 0.9, 1.0))
    sink.emit(Alert("C", "up", 0.9, 1.0))
    sink.close(timeout=0.3)
    assert sink.failures == {"abandoned": 2}
    assert (sink.dropped, sink.failed) == (2, 2)
    hook.release.set()
    wait_for(lambda: not sink._thread.is_alive(), message="the worker stopped after A")
    assert sink.sent == 1
    assert [b["symbol"] for b in hook.bodies] == ["A"]
