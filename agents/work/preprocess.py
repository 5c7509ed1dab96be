"""Preprocessing: imputation, scaling, train/test split, and descriptive statistics.

The split comes first and every statistic (fill values, scaler offset and scale) is fitted
on the training rows only, so nothing about the test rows leaks into the model. The fitted
transform is returned as three plain arrays, ``x' = (fill_nan(x) - offset) / scale``, which
the deployment side applies with :func:`apply_transform` without scikit-learn objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypedDict

import numpy as np
from sklearn.model_selection import train_test_split

from agents.work.errors import DataError
from mesh.errors import ConfigError

ImputeStrategy = Literal["mean", "median", "none"]
ScaleKind = Literal["standard", "minmax", "none"]

IMPUTE_STRATEGIES: Final = ("mean", "median", "none")
SCALE_KINDS: Final = ("standard", "minmax", "none")


class Transform(TypedDict):
    """A fitted feature transform as arrays: ``(where(isnan(x), fill, x) - offset) / scale``."""

    impute: str
    scaler: str
    fill: np.ndarray
    offset: np.ndarray
    scale: np.ndarray


class Prepared(TypedDict):
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    transform: Transform
    feature_names: list[str]
    task: str


def check_matrix(X: Any, *, name: str = "X", allow_nan: bool = True) -> np.ndarray:
    """Coerce to a 2-D float64 array or raise :class:`DataError` saying what is wrong."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a numeric 2-D array")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{name} has {'infinite' if allow_nan else 'non-finite'} values")
    return arr


def fit_imputer(X: np.ndarray, strategy: ImputeStrategy = "mean") -> np.ndarray:
    """Per-column fill values; a column with no observed value fills with 0."""
    if strategy not in IMPUTE_STRATEGIES:
        raise ConfigError(f"impute must be one of {IMPUTE_STRATEGIES}, not {strategy!r}")
    n_cols = X.shape[1]
    if strategy == "none":
        return np.zeros(n_cols)
    fill = np.zeros(n_cols)
    observed = ~np.isnan(X)
    for j in range(n_cols):
        col = X[observed[:, j], j]
        if col.size:
            fill[j] = col.mean() if strategy == "mean" else np.median(col)
    return fill


def fit_scaler(X: np.ndarray, kind: ScaleKind = "standard") -> tuple[np.ndarray, np.ndarray]:
    """``(offset, scale)`` per column; a constant column keeps scale 1 (as scikit-learn)."""
    if kind not in SCALE_KINDS:
        raise ConfigError(f"scale must be one of {SCALE_KINDS}, not {kind!r}")
    n_cols = X.shape[1]
    if kind == "none":
        return np.zeros(n_cols), np.ones(n_cols)
    if kind == "standard":
        offset, scale = X.mean(axis=0), X.std(axis=0)
    else:
        offset = X.min(axis=0)
        scale = X.max(axis=0) - offset
    scale = np.where(scale > np.finfo(np.float64).eps * np.maximum(1.0, np.abs(offset)), scale, 1.0)
    return offset, scale


def fit_transform(
    X: np.ndarray, *, impute: ImputeStrategy = "mean", scale: ScaleKind = "standard"
) -> Transform:
    """Fit imputation then scaling on ``X`` (the training rows)."""
    X = check_matrix(X)
    fill = fit_imputer(X, impute)
    filled = np.where(np.isnan(X), fill, X)
    offset, factor = fit_scaler(filled, scale)
    return Transform(impute=impute, scaler=scale, fill=fill, offset=offset, scale=factor)


def apply_transform(X: Any, transform: Mapping[str, Any]) -> np.ndarray:
    """Apply a fitted :class:`Transform` to new rows (training, test or live traffic)."""
    arr = check_matrix(X)
    try:
        fill = np.asarray(transform["fill"], dtype=np.float64)
        offset = np.asarray(transform["offset"], dtype=np.float64)
        scale = np.asarray(transform["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ConfigError("transform must hold numeric arrays 'fill', 'offset' and 'scale'")
    n = arr.shape[1]
    if not (fill.shape == offset.shape == scale.shape == (n,)):
        raise DataError(f"transform is for {fill.shape} features; the rows have {n}")
    return (np.where(np.isnan(arr), fill, arr) - offset) / scale


def preprocess(
    X: Any,
    y: Any,
    *,
    task: str,
    feature_names: Sequence[str] | None = None,
    impute: ImputeStrategy = "mean",
    scale: ScaleKind = "standard",
    test_size: float = 0.25,
    random_state: int = 0,
    stratify: bool | None = None,
) -> Prepared:
    """Split, then fit the transform on the training rows and apply it to both sides.

    ``stratify`` defaults to True for classification (keeps class balance in both parts)
    and is refused for regression.
    """
    X = check_matrix(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"y must be 1-D with {X.shape[0]} values, got shape {y.shape}")
    if task not in ("classification", "regression"):
        raise ConfigError(f"task must be 'classification' or 'regression', not {task!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ConfigError("test_size must be a number")
    if not 0.0 < float(test_size) < 1.0:
        raise ConfigError(f"test_size must be in (0, 1), not {test_size}")
    if stratify is None:
        stratify = task == "classification"
    if stratify and task != "classification":
        raise ConfigError("stratify only applies to classification")
    names = list(feature_names) if feature_names is not None else [
        f"x{i}" for i in range(X.shape[1])
    ]
    if len(names) != X.shape[1]:
        raise DataError(f"{len(names)} feature names for {X.shape[1]} columns")
    n_test = int(np.ceil(float(test_size) * X.shape[0]))
    if n_test < 1 or X.shape[0] - n_test < 1:
        raise DataError(f"{X.shape[0]} rows are too few to split with test_size={test_size}")
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=float(test_size), random_state=random_state,
            stratify=y if stratify else None,
        )
    except ValueError as exc:
        raise DataError(f"cannot split: {exc}")
    transform = fit_transform(X_train, impute=impute, scale=scale)
    return Prepared(
        X_train=apply_transform(X_train, transform),
        X_test=apply_transform(X_test, transform),
        y_train=np.ascontiguousarray(y_train),
        y_test=np.ascontiguousarray(y_test),
        transform=transform,
        feature_names=names,
        task=task,
    )


def describe(X: Any, feature_names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per-feature count, mean, std (ddof=1), min, quartiles, max and missing count.

    NaN cells are missing and left out of every statistic; a statistic with too few
    observed values (std needs two) is NaN.
    """
    X = check_matrix(X)
    names = list(feature_names) if feature_names is not None else [
        f"x{i}" for i in range(X.shape[1])
    ]
    if len(names) != X.shape[1]:
        raise DataError(f"{len(names)} feature names for {X.shape[1]} columns")
    if len(set(names)) != len(names):
        raise DataError("feature names must be distinct")
    out: dict[str, dict[str, float]] = {}
    nan = float("nan")
    for j, name in enumerate(names):
        col = X[:, j]
        col = col[~np.isnan(col)]
        n = int(col.size)
        stats: dict[str, float] = {"count": n, "missing": int(X.shape[0] - n)}
        if n:
            q25, q50, q75 = np.percentile(col, [25, 50, 75])
            stats.update(
                mean=float(col.mean()), std=float(col.std(ddof=1)) if n > 1 else nan,
                min=float(col.min()), **{"25%": float(q25), "50%": float(q50), "75%": float(q75)},
                max=float(col.max()),
            )
        else:
            stats.update({k: nan for k in ("mean", "std", "min", "25%", "50%", "75%", "max")})
        out[name] = stats
    return out
