"""Both scenarios end to end through the step functions, without a mesh."""

from __future__ import annotations

import io

import numpy as np
import pytest

from agents.work.alerts import ConsoleSink, Notifier
from agents.work.deployment import ModelRegistry
from agents.work.errors import DataError
from agents.work.online import OnlinePredictor
from agents.work.pipeline import (
    alert_step,
    collect_step,
    evaluate_step,
    predict_step,
    preprocess_step,
    train_step,
)
from agents.work.ticks import TickAnalyzer, TickSource
from mesh.errors import ConfigError


def test_ml_workflow_collect_to_deploy() -> None:
    data = collect_step({"dataset": "wine"})
    prepared = preprocess_step(data, {"test_size": 0.3, "random_state": 2})
    assert prepared["summary"]["alcohol"]["count"] == 178
    progress: list[float] = []
    art = train_step(prepared, {"model": "random_forest", "name": "wine", "version": "3",
                                "hyperparams": {"n_estimators": 20, "max_depth": 5}},
                     progress=lambda f, _m: progress.append(f))
    assert progress[-1] == 1.0
    assert art["metrics"] == {}
    evaluated = evaluate_step(art, prepared)
    assert evaluated["metrics"]["accuracy"] > 0.85
    assert evaluated["sha256"] == art["sha256"]
    reg = ModelRegistry(probe=data["X"][:5], min_metrics={"accuracy": 0.8})
    assert reg.deploy(evaluated) == 1
    out = reg.predict(data["X"])  # raw rows, scaled by the transform that rode along
    assert (out["predictions"] == data["y"]).mean() > 0.9


def test_default_model_per_task_and_bad_step_input() -> None:
    prepared = preprocess_step(collect_step({"dataset": "diabetes"}))
    art = train_step(prepared)
    assert art["model"] == "ridge"
    assert art["classes"] is None
    assert evaluate_step(art, prepared)["metrics"]["r2"] > 0.3
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        preprocess_step(collect_step({"dataset": "iris"}), {"shuffle": True})
    with pytest.raises(DataError, match="lacks"):
        train_step({"X_train": np.ones((3, 2))})


def test_streaming_ticks_to_alerts() -> None:
    src = TickSource(["AAPL", "MSFT"], rate_per_s=1000, seed=4)
    analyzer, predictor = TickAnalyzer(50), OnlinePredictor(window=5, model="lstm")
    out = io.StringIO()
    notifier = Notifier([ConsoleSink(out)], threshold=0.5, dedupe_s=1.0, clock=lambda: now)
    alerts = []
    for step in range(1, 21):
        now = step * 0.1
        ticks = src.poll(now)
        stats = analyzer.analyze_batch(ticks["symbols"], ticks["prices"], ticks["timestamps"])
        preds = predict_step(predictor, stats)
        assert preds["probabilities"].shape == (len(preds["symbols"]),)
        alerts += alert_step(notifier, preds)
    assert src.emitted == 2000
    assert predictor.samples_seen > 1900
    # One alert per symbol per second of dedupe at most, and each printed on one line.
    assert 0 < len(alerts) <= 2 * 2 + 2
    assert len(out.getvalue().splitlines()) == len(alerts)
    assert notifier.counters()["suppressed"] > 100
