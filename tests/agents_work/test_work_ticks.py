"""Tick analysis against a naive reference, and the synthetic tick source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.work.errors import DataError
from agents.work.grouping import by_symbol
from agents.work.ticks import TickAnalyzer, TickSource
from mesh.errors import ConfigError, TooLarge


def naive(symbols: list[str], prices: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Tick by tick, straight from the definitions in the module docstring."""
    history: dict[str, list[float]] = {}
    out = {k: np.full(len(prices), np.nan) for k in ("mean", "volatility", "zscore", "ret")}
    for i, (s, p) in enumerate(zip(symbols, prices, strict=True)):
        h = history.setdefault(s, [])
        if h:
            out["ret"][i] = math.log(p / h[-1])
        h.append(float(p))
        w = np.array(h[-window:])
        out["mean"][i] = w.mean()
        if w.size >= 2:
            sd = w.std()
            out["zscore"][i] = 0.0 if sd == 0 else (p - w.mean()) / sd
        rets = np.diff(np.log(w))
        if rets.size >= 2:
            out["volatility"][i] = rets.std()
    return out


@pytest.fixture(scope="module")
def ticks() -> dict:
    return TickSource(["AAPL", "MSFT", "GOOG"], 1000, seed=7, jump_prob=0.01).take(3000)


@pytest.mark.parametrize("batch", [1, 17, 500, 3000])
def test_matches_naive_reference_for_any_batching(ticks: dict, batch: int) -> None:
    window = 40
    ref = naive(ticks["symbols"], ticks["prices"], window)
    an = TickAnalyzer(window)
    n = len(ticks["symbols"])
    parts = {k: [] for k in ref}
    for lo in range(0, n, batch):
        out = an.analyze_batch(ticks["symbols"][lo:lo + batch], ticks["prices"][lo:lo + batch],
                               ticks["timestamps"][lo:lo + batch])
        for k in parts:
            parts[k].append(out[k])
    for k, want in ref.items():
        got = np.concatenate(parts[k])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=k)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=k)
    assert an.ticks_seen == n
    assert sorted(an.symbols) == ["AAPL", "GOOG", "MSFT"]


def test_constant_prices_and_single_update() -> None:
    an = TickAnalyzer(5)
    first = an.update("X", 10.0, 1.0)
    assert first["mean"] == 10.0
    assert math.isnan(first["zscore"])
    assert math.isnan(first["ret"])
    out = an.analyze_batch(["X"] * 4, [10.0] * 4)
    assert out["zscore"].tolist() == [0.0] * 4
    assert out["volatility"][-1] == 0.0
    assert out["ret"][-1] == 0.0


def test_bad_batch_changes_nothing() -> None:
    an = TickAnalyzer(10)
    an.analyze_batch(["A", "A"], [1.0, 2.0])
    with pytest.raises(DataError, match="positive"):
        an.analyze_batch(["A", "B"], [3.0, -1.0])
    with pytest.raises(DataError, match="2 symbols, 1 prices"):
        an.analyze_batch(["A", "B"], [3.0])
    with pytest.raises(DataError, match="symbol"):
        an.analyze_batch([""], [3.0])
    assert an.symbols == ["A"]
    assert an.ticks_seen == 2
    assert an.update("A", 3.0)["mean"] == pytest.approx(2.0)  # window still [1, 2]
    with pytest.raises(TooLarge):
        TickAnalyzer(10, max_symbols=1).analyze_batch(["A", "B"], [1.0, 1.0])
    with pytest.raises(ConfigError):
        TickAnalyzer(1)


def test_source_is_paced_by_the_clock_given() -> None:
    src = TickSource(["A", "B"], rate_per_s=1000, seed=1, start=100.0)
    assert src.poll(100.0)["prices"].size == 0
    b = src.poll(100.5)
    assert b["prices"].size == 500
    assert len(b["symbols"]) == 500
    assert b["timestamps"][0] == pytest.approx(100.001)
    assert b["timestamps"][-1] == pytest.approx(100.5)
    assert np.all(np.diff(b["timestamps"]) > 0)
    assert src.poll(100.5)["prices"].size == 0  # nothing new is due
    assert src.poll(101.0)["prices"].size == 500
    assert src.emitted == 1000
    capped = TickSource(["A"], rate_per_s=1000, max_batch=100)
    assert capped.poll(1.0)["prices"].size == 100
    assert capped.due(1.0) == 900


def test_source_is_deterministic_and_jumps_trigger_large_zscores() -> None:
    a = TickSource(["A", "B"], 1000, seed=3, jump_prob=0.005, jump_size=0.03).take(4000)
    b = TickSource(["A", "B"], 1000, seed=3, jump_prob=0.005, jump_size=0.03).take(4000)
    np.testing.assert_array_equal(a["prices"], b["prices"])
    assert np.all(a["prices"] > 0)
    quiet = TickSource(["A", "B"], 1000, seed=3, jump_prob=0.0).take(4000)
    z_jump = np.abs(TickAnalyzer(50).analyze_batch(a["symbols"], a["prices"])["zscore"])
    z_quiet = np.abs(TickAnalyzer(50).analyze_batch(quiet["symbols"], quiet["prices"])["zscore"])
    # A 30-sigma jump stands out of a 50-tick window; a plain random walk stays below 5.
    assert np.sum(z_jump > 5) >= 3
    assert np.sum(z_quiet > 5) == 0
    with pytest.raises(ConfigError):
        TickSource([], 10)


def test_grouping_keeps_arrival_order_per_symbol() -> None:
    symbols = ["b", "a", "b", "c", "a", "b"]
    groups = {s: idx.tolist() for s, idx in by_symbol(symbols)}
    assert list(groups) == ["b", "a", "c"]  # order of first appearance
    assert groups == {"b": [0, 2, 5], "a": [1, 4], "c": [3]}
    assert list(by_symbol([])) == []
