"""ml_trainer: trains and evaluates models, and predicts the next tick's move online.

``training`` reports progress through ``ctx.progress`` (ensembles grow in chunks, networks
epoch by epoch), so the caller sees it move and a cancel stops the fit between chunks.
Its artifact carries the held-out rows (``holdout``) when the input had them, so the seed's
``evaluation`` step, which depends on training alone, can still score the model.
``prediction`` is P(next return > 0) from tick statistics, by request (state per
``session``) or as a pipeline stage (``start_stage``: stats in, predictions out).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from agents.base import Context, action
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
from agents.work.errors import DataError
from agents.work.online import OnlinePredictor
from agents.work.pipeline import evaluate_step, predict_step, train_step
from mesh.errors import ConfigError
from mesh.pubsub import Message

ARTIFACT_KEYS: Final = ("format", "bytes", "sha256")
STAT_KEYS: Final = ("symbols", "ret", "timestamps")
PREDICTION_KEYS: Final = ("probabilities", "timestamps")
MAX_SESSIONS: Final = 64


def _predictor(params: Mapping[str, Any]) -> OnlinePredictor:
    window = params.get("window", 10)
    model = params.get("model", "sgd")
    if isinstance(window, bool) or not isinstance(window, int):
        raise ConfigError(f"window must be an int, not {window!r}")
    if not isinstance(model, str):
        raise ConfigError(f"model must be a name, not {model!r}")
    return OnlinePredictor(window=window, model=model, seed=int(params.get("seed", 0)))


class MlTrainer(WorkAgent):
    """Trains, evaluates, and predicts online from tick statistics."""

    name = "ml_trainer"
    capacity = 2  # training is CPU-bound: more at once would only share the cores

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sessions: OrderedDict[str, OnlinePredictor] = OrderedDict()
        self._lock = threading.Lock()

    @action()
    @work
    def training(self, data: Any, ctx: Context) -> Any:
        """Fit ``params["model"]`` on the preprocessed data among the inputs."""
        params, inputs = step_parts(data)
        prepared = find_input(inputs, ("X_train", "y_train", "task"), "preprocessed data")
        ctx.progress(0.0, f"accepted by {self.instance_name}")
        artifact: dict[str, Any] = dict(train_step(prepared, params, progress=ctx.progress))
        if "X_test" in prepared and "y_test" in prepared:
            artifact["holdout"] = {"X_test": prepared["X_test"], "y_test": prepared["y_test"]}
        return artifact

    @action()
    @work
    def evaluation(self, data: Any, ctx: Context) -> Any:
        """Metrics on held-out rows: from an input that has them, else the artifact's own."""
        _, inputs = step_parts(data)
        artifact = dict(find_input(inputs, ARTIFACT_KEYS, "a model artifact"))
        holdout = artifact.pop("holdout", None)
        try:
            prepared = find_input(inputs, ("X_test", "y_test"), "held-out rows")
        except DataError:
            if not isinstance(holdout, Mapping):
                raise
            prepared = holdout
        return evaluate_step(artifact, prepared)

    @action()
    @work
    def prediction(self, data: Any, ctx: Context) -> Any:
        """P(up) per tick of one batch of stats (``symbols``, ``ret``, ``timestamps``)."""
        params, inputs = step_parts(data)
        stats = find_input(inputs, STAT_KEYS, "tick statistics") if inputs else params
        session = str(params.get("session", "default"))
        with self._lock:
            predictor = self._sessions.get(session)
            if predictor is None:
                predictor = self._sessions[session] = _predictor(params)
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session)
            return predict_step(predictor, stats)

    def make_stage(self, params: Mapping[str, Any]) -> Callable[[list[Message]], Outputs]:
        """Stats from a topic prefix in, predictions per symbol on ``publish``."""
        predictor = _predictor(params)
        publish = str(params.get("publish") or "predictions.")

        def process(batch: list[Message]) -> Outputs:
            stats = merge_batches([m.data for m in batch], STAT_KEYS)
            preds = predict_step(predictor, stats)
            return [(topic_for(publish, sym), part)
                    for sym, part in split_by_symbol(preds, PREDICTION_KEYS).items()]

        return process


if __name__ == "__main__":
    MlTrainer.main()
