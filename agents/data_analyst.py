"""data_analyst: collects and prepares datasets, and analyses market ticks as they stream.

Workflow actions (named after the seed's steps, so a step's default action works):
``data_collection`` (a bundled dataset or a CSV confined to ``AGP_DATA_DIR``),
``preprocessing`` (split, impute, scale; fitted on training rows only) and ``describe``.
Streaming: ``analysis`` is a stream handler (tick batches in under credit, rolling stats
published per symbol on ``params["publish"]`` + symbol), ``analyze`` one tick batch by
request, and ``start_stage`` the same analysis fed by a pub/sub topic prefix.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from agents.base import Context, StreamIn, action
from agents.common import (
    Outputs,
    WorkAgent,
    find_input,
    merge_batches,
    split_by_symbol,
    step_parts,
    topic_for,
    work,
)
from agents.work.datasets import collect
from agents.work.errors import DataError
from agents.work.pipeline import preprocess_step
from agents.work.preprocess import describe
from agents.work.ticks import TickAnalyzer
from mesh.errors import ConfigError
from mesh.pubsub import Message

TICK_KEYS: Final = ("symbols", "prices", "timestamps")
STAT_KEYS: Final = ("prices", "timestamps", "mean", "volatility", "zscore", "ret")
MAX_SESSIONS: Final = 64
DEFAULT_WINDOW: Final = 50


def _window(params: Mapping[str, Any]) -> int:
    window = params.get("window", DEFAULT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int):
        raise ConfigError(f"window must be an int, not {window!r}")
    return window


def _ticks(batch: Any) -> Mapping[str, Any]:
    if not isinstance(batch, Mapping) or "symbols" not in batch or "prices" not in batch:
        raise DataError("a tick batch is a mapping with 'symbols' and 'prices'")
    return batch


class DataAnalyst(WorkAgent):
    """Collects, preprocesses and describes datasets; analyses tick streams."""

    name = "data_analyst"
    capacity = 4

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sessions: OrderedDict[str, TickAnalyzer] = OrderedDict()
        self._lock = threading.Lock()
        self.ticks_analysed = 0

    def extra_stats(self) -> dict[str, Any]:
        return {"ticks_analysed": self.ticks_analysed, "sessions": len(self._sessions)}

    # ------------------------------------------------------------------ workflow steps
    @action()
    @work
    def data_collection(self, data: Any, ctx: Context) -> Any:
        """``{"dataset": "iris"}``, ``{"csv": path, "target": col}`` or ``{"csv_data": ...}``."""
        params, _ = step_parts(data)
        root = os.environ.get("AGP_DATA_DIR") or os.getcwd()
        return collect(params, root=root)

    @action()
    @work
    def preprocessing(self, data: Any, ctx: Context) -> Any:
        """The dataset among the inputs, split and transformed (see preprocess_step)."""
        params, inputs = step_parts(data)
        dataset = find_input(inputs, ("X", "y", "task"), "a dataset")
        return preprocess_step(dataset, params)

    @action()
    @work
    def describe(self, data: Any, ctx: Context) -> Any:
        """Per-feature statistics of ``X`` (given directly, or a dataset among the inputs)."""
        params, inputs = step_parts(data)
        source = find_input(inputs, ("X",), "a feature matrix") if inputs else params
        if "X" not in source:
            raise DataError("describe needs 'X' (or a dataset among the inputs)")
        return describe(source["X"], source.get("feature_names"))

    # ------------------------------------------------------------------ streaming
    @action()
    @work
    def analyze(self, data: Any, ctx: Context) -> Any:
        """Rolling stats for one tick batch; state is kept per ``session`` (default one)."""
        params, inputs = step_parts(data)
        batch = _ticks(find_input(inputs, TICK_KEYS[:2], "ticks") if inputs else params)
        session = str(params.get("session", "default"))
        with self._lock:
            analyzer = self._sessions.get(session)
            if analyzer is None:
                analyzer = self._sessions[session] = TickAnalyzer(_window(params))
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session)
            stats = analyzer.analyze_batch(batch["symbols"], batch["prices"],
                                           batch.get("timestamps"))
            self.ticks_analysed += len(stats["symbols"])
        return dict(stats)

    @action(stream=True)
    @work
    async def analysis(self, chunks: StreamIn, ctx: Context) -> Any:
        """Tick batches in (credit-controlled); stats out on ``publish`` + symbol, if given.

        Each batch takes well under a millisecond, so it runs on the loop, in order.
        """
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        analyzer = TickAnalyzer(_window(params))
        publish = params.get("publish")
        if publish is not None and (not isinstance(publish, str) or not publish):
            raise ConfigError("publish must be a topic prefix")
        ticks = batches = published = 0
        async for chunk in chunks:
            batch = _ticks(chunk)
            stats = analyzer.analyze_batch(batch["symbols"], batch["prices"],
                                           batch.get("timestamps"))
            ticks += len(stats["symbols"])
            batches += 1
            if publish:
                for sym, part in split_by_symbol(stats, STAT_KEYS).items():
                    self.mesh.publish(topic_for(publish, sym), part)
                    published += 1
        self.ticks_analysed += ticks
        return {"ticks": ticks, "batches": batches, "published": published,
                "symbols": analyzer.symbols, "instance": self.instance_name}

    def make_stage(self, params: Mapping[str, Any]) -> Callable[[list[Message]], Outputs]:
        """Ticks from a topic prefix in, stats out on ``publish`` (default ``stats.``)."""
        analyzer = TickAnalyzer(_window(params))
        publish = str(params.get("publish") or "stats.")

        def process(batch: list[Message]) -> Outputs:
            ticks = merge_batches([_ticks(m.data) for m in batch], TICK_KEYS)
            stats = analyzer.analyze_batch(ticks["symbols"], ticks["prices"],
                                           ticks.get("timestamps"))
            self.ticks_analysed += len(stats["symbols"])
            return [(topic_for(publish, sym), part)
                    for sym, part in split_by_symbol(stats, STAT_KEYS).items()]

        return process


if __name__ == "__main__":
    DataAnalyst.main()
