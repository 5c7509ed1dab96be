"""notification: turns scores into alerts with a threshold, de-duplication and sinks.

Sinks are set by the operator, never by a caller (a caller-chosen URL would let anyone make
this process POST anywhere): a console line on stdout, a JSON-lines file under
``AGP_ALERT_DIR`` (default ``run/alerts``), and a webhook when ``AGP_ALERT_WEBHOOK`` is set.
``notify`` takes one score or a batch by request. As a pipeline stage (``start_stage``) it
subscribes to a prefix of prediction topics, alerts on P(up) >= threshold (``up``) and
P(down) >= threshold (``down``), and publishes each alert sent on ``publish`` + symbol with
its tick-to-alert latency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from agents.base import Context, action
from agents.common import (
    Outputs,
    TopicStage,
    WorkAgent,
    check_topics,
    merge_batches,
    step_parts,
    topic_for,
    work,
)
from agents.work.alerts import ConsoleSink, JsonlFileSink, Notifier, Sink, WebhookSink
from agents.work.errors import DataError
from agents.work.pipeline import alert_step
from mesh.errors import ConfigError
from mesh.pubsub import Message

log = logging.getLogger("agp.agents")

PREDICTION_KEYS: Final = ("symbols", "probabilities", "timestamps")
KINDS: Final = ("up", "down")
DEFAULT_THRESHOLD: Final = 0.8
STAGE_DEDUPE_S: Final = 1.0
SINK_CLOSE_S: Final = 5.0  # what on_stop gives the sinks to finish (a webhook's queued POSTs)


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, not {value!r}")
    return float(value)


class Notification(WorkAgent):
    """Threshold, de-duplication and sinks for alerts; a pipeline stage over predictions."""

    name = "notification"
    capacity = 16

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sinks: list[Sink] = []
        self.notifier: Notifier | None = None
        # one per running stage, by its stage function; a stopped stage's counters are
        # folded into ``_retired`` so the totals in stats never go down
        self.stage_notifiers: dict[Callable[[list[Message]], Outputs], Notifier] = {}
        self._retired: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def on_start(self) -> None:
        await asyncio.to_thread(self._open_sinks)

    def _open_sinks(self) -> None:
        alert_dir = Path(os.environ.get("AGP_ALERT_DIR") or "run/alerts")
        alert_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.instance_name)
        self.alert_log = alert_dir / f"alerts-{safe}.jsonl"
        self.sinks = [ConsoleSink(), JsonlFileSink(self.alert_log)]
        webhook = os.environ.get("AGP_ALERT_WEBHOOK")
        if webhook:
            self.sinks.append(WebhookSink(webhook))
        self.notifier = Notifier(
            self.sinks,
            threshold=float(os.environ.get("AGP_ALERT_THRESHOLD", DEFAULT_THRESHOLD)),
            dedupe_s=float(os.environ.get("AGP_ALERT_DEDUPE_S", 60.0)))

    async def on_stop(self) -> None:
        """Stop the stages, then close the sinks in a thread: a webhook finishing its queued
        POSTs may take seconds, and the event loop must keep serving meanwhile."""
        await super().on_stop()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._close_sinks), SINK_CLOSE_S + 1.0)
        except asyncio.TimeoutError:
            log.warning("alert sinks not closed within %.0fs", SINK_CLOSE_S + 1.0)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                if isinstance(sink, WebhookSink):
                    sink.close(timeout=SINK_CLOSE_S)  # what is still queued then is counted
                else:
                    sink.close()
            except Exception:  # one sink that fails to close must not keep the others open
                log.warning("alert sink %s failed to close", type(sink).__name__,
                            exc_info=True)

    def stage_stopped(self, stage: TopicStage) -> None:
        with self._lock:
            notifier = self.stage_notifiers.pop(stage.process, None)
            if notifier is not None:
                self._retired.update(notifier.counters())

    def extra_stats(self) -> dict[str, Any]:
        with self._lock:
            totals = Counter({"sent": 0, "suppressed": 0, "below_threshold": 0, "failed": 0})
            totals.update(self._retired)
            for notifier in [self.notifier, *self.stage_notifiers.values()]:
                if notifier is not None:
                    totals.update(notifier.counters())
        return {"alerts": dict(totals), "alert_log": str(getattr(self, "alert_log", ""))}

    @action()
    @work
    def notify(self, data: Any, ctx: Context) -> Any:
        """One score (``symbol``, ``score``, ``kind``) or a batch (``symbols``, ``scores``);
        the alerts actually sent (after threshold and de-duplication)."""
        params, _ = step_parts(data)
        assert self.notifier is not None
        kind = str(params.get("kind", "alert"))
        if "symbols" in params:
            scores = params.get("scores", params.get("probabilities"))
            if scores is None:
                raise DataError("a batch needs 'scores'")
            sent = self.notifier.process_batch(params["symbols"], scores, kind=kind,
                                               timestamps=params.get("timestamps"))
            return [a.to_dict() for a in sent]
        if "symbol" not in params or "score" not in params:
            raise DataError("notify needs 'symbol' and 'score' (or a batch of 'symbols')")
        alert = self.notifier.process(params["symbol"], kind, params["score"],
                                      ts=params.get("ts"), message=str(params.get("message", "")))
        return [] if alert is None else [alert.to_dict()]

    def make_stage(self, params: Mapping[str, Any]) -> Callable[[list[Message]], Outputs]:
        """Predictions in; alerts for P >= ``threshold`` out on ``publish`` (or ``topic``)."""
        notifier = Notifier(self.sinks, threshold=_number(params, "threshold", DEFAULT_THRESHOLD),
                            dedupe_s=_number(params, "dedupe_s", STAGE_DEDUPE_S))
        kinds = params.get("kinds", list(KINDS))
        if not isinstance(kinds, (list, tuple)) or not set(kinds) <= set(KINDS):
            raise ConfigError(f"kinds must be a subset of {list(KINDS)}")
        publish = str(params.get("publish") or params.get("topic") or "alerts.")
        instance = self.instance_name

        def process(batch: list[Message]) -> Outputs:
            preds = merge_batches([m.data for m in batch], PREDICTION_KEYS)
            check_topics(publish, preds["symbols"])  # before any alert goes out
            p = np.asarray(preds["probabilities"], dtype=np.float64)
            sent = []
            if "up" in kinds:
                sent += alert_step(notifier, preds, kind="up")
            if "down" in kinds:
                sent += alert_step(notifier, {**preds, "probabilities": 1.0 - p}, kind="down")
            now = time.time()
            return [(topic_for(publish, a["symbol"]),
                     {**a, "latency_ms": (now - a["ts"]) * 1000.0, "by": instance})
                    for a in sent]

        with self._lock:
            self.stage_notifiers[process] = notifier  # released by stage_stopped
        return process


if __name__ == "__main__":
    Notification.main()
