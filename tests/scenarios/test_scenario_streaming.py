"""Scenario 2 end to end, briefly: ticks -> analysis -> prediction -> alerts, measured."""

from __future__ import annotations

import asyncio
import math

import pytest

from agents.scenarios import SEED_PIPELINE, run_streaming_scenario
from mesh import ConfigError

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "ORCL"]


def test_seed_pipeline_alerts_arrive_with_latency_figures(endpoint: str) -> None:
    result = asyncio.run(run_streaming_scenario(
        endpoint, rate=2000, duration=2.0, symbols=SYMBOLS, min_alerts=1, max_duration=20.0))
    assert result["first_stage_pattern"] == "streaming"
    assert result["ticks"] >= 0.9 * 2000 * result["feed_s"]
    assert result["alerts"] >= 1
    assert sum(result["alert_kinds"].values()) == result["alerts"]
    lat = result["alert_latency_ms"]
    assert lat["n"] == result["alerts"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 5000
    pred = result["prediction_latency_ms"]
    assert pred["n"] >= 0.9 * (result["ticks"] - len(SYMBOLS))
    assert 0 < pred["p50"] <= pred["p99"]
    assert math.isfinite(pred["p99"])
    stages = result["stages"]
    assert stages["settled"] is True
    for name in ("prediction", "alerts"):
        assert stages[name]["dropped"] == 0
        assert stages[name]["errors"] == 0
    assert stages["alerts"]["published"] == result["alerts"]


def test_pubsub_fed_first_stage(endpoint: str) -> None:
    pipeline = {**SEED_PIPELINE, "analysis": {"agent": "data_analyst", "pattern": "pubsub",
                                              "window": 20}}
    result = asyncio.run(run_streaming_scenario(endpoint, pipeline=pipeline, rate=1000,
                                                duration=1.0, symbols=SYMBOLS[:3]))
    assert result["first_stage_pattern"] == "pubsub"
    assert result["topics"]["ticks"].startswith("ticks.")
    assert result["stages"]["analysis"]["processed"] > 0
    assert result["prediction_latency_ms"]["n"] >= 0.9 * (result["ticks"] - 3)


def test_bad_pipelines_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="rate"):
        asyncio.run(run_streaming_scenario(endpoint, rate=1e6, duration=0.1))
    late_stream = {**SEED_PIPELINE, "prediction": {"agent": "ml_trainer",
                                                   "pattern": "streaming"}}
    with pytest.raises(ConfigError, match="only the stage after the source"):
        asyncio.run(run_streaming_scenario(endpoint, pipeline=late_stream, duration=0.1))
