"""Online next-move prediction learns a predictable pattern; the "lstm" alias."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agents.work.errors import DataError
from agents.work.online import OnlinePredictor
from mesh.errors import ConfigError


def ar1_returns(n: int, phi: float, seed: int) -> np.ndarray:
    """Mean-reverting returns: the next move's sign is ~70% predictable from the last."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    noise = rng.normal(0, 1e-3, n)
    for i in range(1, n):
        r[i] = phi * r[i - 1] + noise[i]
    return r


def prequential_accuracy(pred: OnlinePredictor, symbols: list[str], n: int, batch: int) -> float:
    """Stream ticks round-robin over symbols; score each forecast against the next move."""
    series = {s: ar1_returns(n, -0.6, seed=i) for i, s in enumerate(symbols)}
    forecasts: dict[str, list[float]] = {s: [] for s in symbols}
    for lo in range(0, n, batch):
        syms = [s for _ in range(lo, min(n, lo + batch)) for s in symbols]
        rets = np.array([series[s][i] for i in range(lo, min(n, lo + batch)) for s in symbols])
        p = pred.update_and_predict_batch(syms, rets)
        for s in symbols:
            forecasts[s].extend(p[np.array(syms) == s])
    hits = []
    for s in symbols:
        f = np.array(forecasts[s])[:-1]  # forecast made at tick i is for tick i + 1
        up = series[s][1:] > 0
        hits.append(((f > 0.5) == up)[n // 2:])  # after warm-up
    return float(np.mean(np.concatenate(hits)))


@pytest.mark.parametrize("model", ["sgd", "mlp"])
def test_learns_mean_reversion_better_than_chance(model: str) -> None:
    pred = OnlinePredictor(window=5, model=model, seed=0)
    acc = prequential_accuracy(pred, ["A", "B", "C"], n=2000, batch=50)
    assert acc > 0.64  # chance is 0.5; the best possible here is about 0.70
    assert pred.samples_seen > 5000


def test_no_pattern_means_no_edge() -> None:
    rng = np.random.default_rng(5)
    pred = OnlinePredictor(window=5, model="sgd")
    r = rng.normal(0, 1e-3, 4000)
    p = np.concatenate([pred.update_and_predict("X", r[i:i + 100]) for i in range(0, 4000, 100)])
    acc = np.mean(((p[:-1] > 0.5) == (r[1:] > 0))[2000:])
    assert 0.4 < acc < 0.6


def test_warm_up_returns_one_half_and_single_symbol_api() -> None:
    pred = OnlinePredictor(window=4)
    assert pred.update_and_predict("X", [0.01, -0.01, 0.02]).tolist() == [0.5] * 3
    out = pred.update_and_predict("X", [0.01, -0.02])
    assert out.shape == (2,)
    assert np.all((out >= 0) & (out <= 1))
    assert pred.samples_seen == 1  # one window [r0..r3] has a known next move (r4)


def test_lstm_maps_to_mlp_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="agents.work.online"):
        pred = OnlinePredictor(model="lstm")
    assert pred.model_name == "mlp"
    assert any("lstm" in r.getMessage() for r in caplog.records)


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="model"):
        OnlinePredictor(model="transformer")
    with pytest.raises(ConfigError, match="window"):
        OnlinePredictor(window=0)
    pred = OnlinePredictor(window=3)
    with pytest.raises(DataError, match="finite"):
        pred.update_and_predict_batch(["A", "A"], [0.1, np.nan])
    with pytest.raises(DataError, match="2 symbols but 1"):
        pred.update_and_predict_batch(["A", "B"], [0.1])
    assert pred.samples_seen == 0
