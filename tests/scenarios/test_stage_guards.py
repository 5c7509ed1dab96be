"""Pipeline stages survive bad input and failed publishes, and say so in their counters.

A stage's worker once died silently on a publish error (a topic over 255 bytes built from
a long symbol) while the stage kept queueing: these tests drive real stages, in-process on
a real mesh connection and inside the shared mesh's agents.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agents.common import TopicStage
from mesh import Malformed, Mesh
from mesh.aio import AsyncMesh
from mesh.pubsub import Message
from tests.helpers import wait_for

LONG = "X" * 300


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Wait on the loop for ``condition`` (polled), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s")
        await asyncio.sleep(0.01)


def test_a_failed_publish_costs_one_output_not_the_worker(endpoint: str) -> None:
    tag = secrets.token_hex(3)

    async def run() -> dict[str, Any]:
        async with await AsyncMesh.connect(endpoint) as mesh:
            got: list[Message] = []
            out = await mesh.subscribe(f"out.{tag}.", got.append)

            def process(batch: list[Message]) -> list[tuple[str, Any]]:
                # topics built raw (no topic_for): the mesh's own publish refuses the long one
                return [(f"out.{tag}.{m.data['sym']}", m.data) for m in batch]

            stage = TopicStage(SimpleNamespace(mesh=mesh), "t1", f"in.{tag}.", process)
            await stage.start()
            for sym in ("A", LONG, "B"):
                mesh.publish(f"in.{tag}.{sym[:8]}", {"sym": sym})
            await until(lambda: stage.processed == 3, what="3 messages processed")
            mesh.publish(f"in.{tag}.C", {"sym": "C"})  # the worker still takes new ones
            await until(lambda: len(got) == 3, what="3 outputs delivered")
            stats = stage.stats()
            final = await stage.stop()
            out.close()
            return {"stats": stats, "final": final, "got": [m.data["sym"] for m in got]}

    r = asyncio.run(run())
    assert r["got"] == ["A", "B", "C"]
    assert r["stats"]["worker"] == "running"
    assert r["stats"]["publish_failed"] == {"ConfigError": 1}
    assert r["stats"]["published"] == 3
    assert r["final"]["worker"] == "stopped"


def test_a_dead_worker_is_visible_and_its_messages_counted_as_dropped(endpoint: str) -> None:
    tag = secrets.token_hex(3)

    async def run() -> dict[str, Any]:
        async with await AsyncMesh.connect(endpoint) as mesh:
            stage = TopicStage(SimpleNamespace(mesh=mesh), "t2", f"in.{tag}.", lambda b: [])
            await stage.start()
            assert stage._task is not None
            stage._task.cancel()  # the worker ends without stop() having been called
            await asyncio.gather(stage._task, return_exceptions=True)
            mesh.publish(f"in.{tag}.A", {"sym": "A"})
            await until(lambda: stage.received == 1, what="the message received")
            stats = stage.stats()
            await stage.stop()
            return stats

    stats = asyncio.run(run())
    assert stats["worker"] == "dead"
    assert stats["died"] == "cancelled"
    assert stats["queued"] == 0
    assert stats["dropped"] == 1
    assert stats["drop_reasons"] == {"worker_dead": 1}


def _stage_stats(client: Mesh, stage: dict[str, Any]) -> dict[str, Any]:
    return client.request(stage["instance"], "stats")["stages"][stage["stage"]]


def test_notification_stage_refuses_a_symbol_too_long_for_a_topic(client: Mesh) -> None:
    tag = secrets.token_hex(3)
    alerts = client.subscribe(f"alerts.{tag}.")
    stage = client.request("notification", "start_stage",
                           {"subscribe": f"predictions.{tag}.", "publish": f"alerts.{tag}.",
                            "threshold": 0.8, "kinds": ["up"]})
    for sym in (LONG, "GOOD"):
        client.publish(f"predictions.{tag}.{sym[:8]}",
                       {"symbols": [sym], "probabilities": np.array([0.95]),
                        "timestamps": np.array([time.time()])})
    got = alerts.get(timeout=10)
    assert got.data["symbol"] == "GOOD"
    stats = wait_for(lambda: (s := _stage_stats(client, stage))["processed"] == 2 and s,
                     message="both messages processed")
    final = client.request(stage["instance"], "stop_stage", {"stage": stage["stage"]})
    alerts.close()
    assert stats["worker"] == "running"
    assert stats["errors"] == 1
    assert stats["refused"] == {"DataError": 1}
    assert stats["publish_failed"] == {}
    assert final["published"] == 1  # no alert was sent (nor published) for the long symbol


def test_prediction_stage_refuses_a_symbol_too_long_for_a_topic(client: Mesh) -> None:
    tag = secrets.token_hex(3)
    preds = client.subscribe(f"predictions.{tag}.")
    stage = client.request("ml_trainer", "start_stage",
                           {"subscribe": f"stats.{tag}.", "publish": f"predictions.{tag}."})
    for sym in (LONG, "GOOD"):
        client.publish(f"stats.{tag}.{sym[:8]}",
                       {"symbols": [sym] * 3, "ret": np.array([0.01, -0.02, 0.03]),
                        "timestamps": np.array([1.0, 2.0, 3.0])})
    assert preds.get(timeout=10).topic == f"predictions.{tag}.GOOD"
    stats = wait_for(lambda: (s := _stage_stats(client, stage))["processed"] == 2 and s,
                     message="both messages processed")
    client.request(stage["instance"], "stop_stage", {"stage": stage["stage"]})
    preds.close()
    assert stats["worker"] == "running"
    assert stats["refused"] == {"DataError": 1}
    assert stats["published"] == 1


def test_a_publish_prefix_without_room_for_a_symbol_is_refused(client: Mesh) -> None:
    with pytest.raises(Malformed, match="no room"):
        client.request("notification", "start_stage", {"subscribe": "x.", "publish": "p" * 200})
    assert not any(s["subscribe"] == "x." for s in
                   client.request("notification", "stats")["stages"].values())


def test_notification_stage_retry_keeps_the_good_alerts_of_a_refused_batch() -> None:
    from agents.notification import Notification

    agent = Notification(endpoint="tcp://127.0.0.1:1")  # never connected: the stage function
    process = agent.make_stage({"publish": "alerts.t.", "kinds": ["up"], "dedupe_s": 60})
    stage = TopicStage(agent, "t3", "predictions.t.", process)
    good = Message("predictions.t.GOOD", {"symbols": ["GOOD"], "probabilities": [0.95],
                                          "timestamps": [1.0]})
    bad = Message("predictions.t.BAD", {"symbols": [5], "probabilities": [0.95],
                                        "timestamps": [2.0]})
    out = stage._process([good, bad])  # the batch fails, then message by message
    assert [topic for topic, _ in out] == ["alerts.t.GOOD"]
    assert stage.errors == 1
    assert stage.refused == {"DataError": 1}


def test_drain_waits_for_the_batch_a_stage_is_processing(endpoint: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import scenarios
    from mesh.workflow import StageSpec

    tag = secrets.token_hex(3)
    gate = threading.Event()

    def slow(batch: list[Message]) -> list[tuple[str, Any]]:
        gate.wait(10)  # held until the test has seen the drain poll while this runs
        return [(f"out.{tag}.A", {"ts": time.time()}) for _ in batch]

    async def run() -> tuple[bool, dict[str, Any], int]:
        async with await AsyncMesh.connect(endpoint) as mesh:
            stage = TopicStage(SimpleNamespace(mesh=mesh), "g1", f"in.{tag}.", slow)
            polls = []

            async def stats(_mesh: Any, _instance: str, _sid: str) -> dict[str, Any]:
                polls.append(1)  # the stage's real counters, without the mesh hop
                return stage.stats()

            monkeypatch.setattr(scenarios, "_stage_stats", stats)
            taps = scenarios._Taps()
            out = await mesh.subscribe(f"out.{tag}.", taps.on_alert)
            await stage.start()
            mesh.publish(f"in.{tag}.A", {"x": 1})
            await until(lambda: stage.received == 1 and not stage.queue, what="batch taken")
            spec = StageSpec("gate", agent="gate")
            drain = asyncio.create_task(
                scenarios._drain(mesh, [(spec, "here", "g1")], [spec], 1, taps))
            await until(lambda: len(polls) >= 3 or drain.done(), what="three drain polls")
            early = drain.done()  # it must not have called the run settled mid-batch
            gate.set()
            counters = await asyncio.wait_for(drain, 15)
            await stage.stop()
            out.close()
            return early, counters, len(taps.alerts)

    try:
        early, counters, alerts = asyncio.run(run())
    finally:
        gate.set()
    assert early is False
    assert counters["settled"] is True
    assert counters["gate"]["published"] == 1
    assert alerts == 1
