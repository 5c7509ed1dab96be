"""Preprocessing: split before fitting (no leakage), transforms, and describe()."""

from __future__ import annotations

import numpy as np
import pytest

from agents.work.datasets import load_builtin
from agents.work.errors import DataError
from agents.work.preprocess import apply_transform, describe, preprocess
from mesh.errors import ConfigError


def test_shapes_and_stratified_split() -> None:
    d = load_builtin("breast_cancer")
    p = preprocess(d["X"], d["y"], task="classification", test_size=0.2, random_state=3)
    assert p["X_train"].shape[0] + p["X_test"].shape[0] == 569
    assert p["X_test"].shape == (114, 30)
    assert p["y_train"].shape == (p["X_train"].shape[0],)
    full = d["y"].mean()
    assert abs(p["y_train"].mean() - full) < 0.01
    assert abs(p["y_test"].mean() - full) < 0.01


def test_scaler_is_fitted_on_training_rows_only() -> None:
    d = load_builtin("wine")
    p = preprocess(d["X"], d["y"], task="classification", random_state=1)
    t = p["transform"]
    # Recover the raw training rows from the scaled ones; their mean/std are the params.
    raw_train = p["X_train"] * t["scale"] + t["offset"]
    np.testing.assert_allclose(t["offset"], raw_train.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(t["scale"], raw_train.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(p["X_train"].mean(axis=0), 0, atol=1e-10)
    # The full data's mean differs: fitting on it would have leaked the test rows.
    assert not np.allclose(t["offset"], d["X"].mean(axis=0), rtol=1e-6)
    assert not np.allclose(p["X_test"].mean(axis=0), 0, atol=1e-3)


def test_imputation_uses_training_statistics() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([np.arange(200.0), rng.normal(5, 2, 200), rng.normal(0, 1, 200)])
    X[::7, 1] = np.nan
    y = rng.normal(size=200)
    p = preprocess(X, y, task="regression", impute="median", scale="none", random_state=0)
    t = p["transform"]
    train_rows = p["X_train"][:, 0].astype(int)  # column 0 is the original row number
    assert t["fill"][1] == pytest.approx(np.nanmedian(X[train_rows, 1]))
    assert t["fill"][1] != pytest.approx(np.nanmedian(X[:, 1]))
    assert not np.isnan(p["X_train"]).any()
    assert not np.isnan(p["X_test"]).any()
    new = np.array([[np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(apply_transform(new, t), t["fill"][None, :])


def test_minmax_bounds_train_rows() -> None:
    d = load_builtin("iris")
    p = preprocess(d["X"], d["y"], task="classification", scale="minmax")
    assert p["X_train"].min() == pytest.approx(0.0)
    assert p["X_train"].max() == pytest.approx(1.0)


def test_bad_arguments() -> None:
    X, y = np.ones((10, 2)), np.arange(10.0)
    with pytest.raises(ConfigError, match="test_size"):
        preprocess(X, y, task="regression", test_size=1.5)
    with pytest.raises(ConfigError, match="scale"):
        preprocess(X, y, task="regression", scale="robust")
    with pytest.raises(ConfigError, match="stratify"):
        preprocess(X, y, task="regression", stratify=True)
    with pytest.raises(DataError, match="1-D"):
        preprocess(X, y[:5], task="regression")
    with pytest.raises(DataError, match="infinite"):
        preprocess(np.full((10, 2), np.inf), y, task="regression")
    with pytest.raises(DataError, match="features"):
        apply_transform(np.ones((2, 3)), {"fill": np.zeros(2), "offset": np.zeros(2),
                                          "scale": np.ones(2)})


def test_describe_matches_numpy() -> None:
    d = load_builtin("diabetes")
    X = d["X"].copy()
    X[:10, 0] = np.nan
    stats = describe(X, d["feature_names"])
    assert list(stats) == d["feature_names"]
    col = X[10:, 0]
    s = stats[d["feature_names"][0]]
    assert s["count"] == 432
    assert s["missing"] == 10
    assert s["mean"] == pytest.approx(col.mean())
    assert s["std"] == pytest.approx(col.std(ddof=1))
    assert s["min"] == col.min()
    assert s["max"] == col.max()
    for key, q in (("25%", 25), ("50%", 50), ("75%", 75)):
        assert s[key] == pytest.approx(np.percentile(col, q))
    s1 = stats[d["feature_names"][1]]
    assert s1["missing"] == 0
    assert s1["mean"] == pytest.approx(X[:, 1].mean())


def test_describe_all_missing_column() -> None:
    X = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    stats = describe(X)
    assert stats["x0"]["count"] == 0
    assert stats["x0"]["missing"] == 2
    assert np.isnan(stats["x0"]["mean"])
    assert stats["x1"]["std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    with pytest.raises(DataError, match="distinct"):
        describe(X, ["a", "a"])
