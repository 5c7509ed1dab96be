"""Model training with progress and cancellation, and evaluation metrics.

Training reports progress through ``progress(fraction, message)``. Iterative models are
trained in chunks so the callback runs between them: ensembles grow their trees with
``warm_start``, neural networks train epoch by epoch with ``partial_fit``; one-shot
models (logistic regression, ridge) report only start and end. The callback may raise
(a deadline passed, the run was cancelled): training stops at once and the exception
propagates unchanged, so the caller's own cancel signal reaches the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from agents.work.errors import DataError
from agents.work.hyperparams import ModelSpec, check_params, spec_for
from agents.work.preprocess import check_matrix

Progress = Callable[[float, str], None]

#: Progress is reported this many times (at most) while an ensemble grows.
ENSEMBLE_CHUNKS: Final = 10
MAX_TRAIN_CELLS: Final = 50_000_000


def train(
    X: Any,
    y: Any,
    *,
    model: str,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> BaseEstimator:
    """Fit ``model`` (a name from :func:`hyperparams.model_names`) with checked params.

    ``progress`` is called with a fraction in [0, 1] and a short message, at least at the
    start and at the end; whatever it raises stops training and propagates.
    """
    spec = spec_for(model)
    kwargs = check_params(spec, params)
    X, y = _check_xy(X, y, spec)
    report = progress or _no_progress
    report(0.0, f"training {spec.name} on {X.shape[0]} rows x {X.shape[1]} features")
    if spec.schedule == "ensemble":
        est = _train_ensemble(spec, kwargs, X, y, report)
    elif spec.schedule == "epochs":
        est = _train_epochs(spec, kwargs, X, y, report)
    else:
        est = spec.cls(**kwargs)
        _fit(est, X, y)
    report(1.0, f"trained {spec.name}")
    return est


def evaluate(est: Any, X: Any, y: Any) -> dict[str, float]:
    """Metrics on held-out rows.

    Classification: ``accuracy``, ``f1`` (of the positive class when binary, macro
    average otherwise) and ``roc_auc`` (one-vs-rest macro when multiclass; left out when
    undefined, e.g. a single class in ``y``). Regression: ``r2``, ``mae``, ``rmse``.
    Both add ``n_samples``.
    """
    X = check_matrix(X, allow_nan=False)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"y must be 1-D with {X.shape[0]} values, got shape {y.shape}")
    n_features = getattr(est, "n_features_in_", X.shape[1])
    if X.shape[1] != n_features:
        raise DataError(f"model expects {n_features} features; X has {X.shape[1]}")
    pred = est.predict(X)
    out: dict[str, float] = {"n_samples": int(X.shape[0])}
    classes = getattr(est, "classes_", None)
    if classes is None:
        out["r2"] = float(r2_score(y, pred)) if y.size > 1 else math.nan
        out["mae"] = float(mean_absolute_error(y, pred))
        out["rmse"] = float(math.sqrt(mean_squared_error(y, pred)))
        return out
    out["accuracy"] = float(accuracy_score(y, pred))
    binary = len(classes) == 2
    out["f1"] = float(f1_score(
        y, pred, average="binary" if binary else "macro",
        pos_label=classes[1] if binary else 1, labels=None if binary else classes,
        zero_division=0,
    ))
    auc = _roc_auc(est, X, y, classes)
    if auc is not None:
        out["roc_auc"] = auc
    return out


def _roc_auc(est: Any, X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float | None:
    if not hasattr(est, "predict_proba") or np.unique(y).size < 2:
        return None
    if not np.isin(y, classes).all():
        return None
    proba = est.predict_proba(X)
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    if np.unique(y).size != len(classes):
        return None  # ovr AUC needs every class present in y
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def _train_ensemble(
    spec: ModelSpec, kwargs: dict[str, Any], X: np.ndarray, y: np.ndarray, report: Progress
) -> BaseEstimator:
    total = int(kwargs.pop("n_estimators"))
    est = spec.cls(**kwargs, n_estimators=1, warm_start=True)
    chunks = range(1, ENSEMBLE_CHUNKS + 1)
    steps = sorted({max(1, round(total * i / ENSEMBLE_CHUNKS)) for i in chunks})
    for n in steps:
        est.set_params(n_estimators=n)
        _fit(est, X, y)
        report(n / total, f"{n}/{total} estimators")
    est.set_params(warm_start=False)  # a later fit() of the artifact starts afresh
    return est


def _train_epochs(
    spec: ModelSpec, kwargs: dict[str, Any], X: np.ndarray, y: np.ndarray, report: Progress
) -> BaseEstimator:
    """Epochs of ``partial_fit``, stopping when the loss stalls (as ``fit`` would)."""
    epochs = int(kwargs.pop("max_iter", 200))
    tol = float(kwargs.pop("tol", 1e-4))
    patience = int(kwargs.pop("n_iter_no_change", 10))
    est = spec.cls(**kwargs, max_iter=epochs, tol=tol, n_iter_no_change=patience)
    extra = {"classes": np.unique(y)} if spec.task == "classification" else {}
    best, stalled = math.inf, 0
    for epoch in range(1, epochs + 1):
        try:
            est.partial_fit(X, y, **extra)
        except ValueError as exc:
            raise DataError(f"{spec.name} cannot fit this data: {exc}")
        loss = float(est.loss_)
        if not math.isfinite(loss):
            raise DataError(f"{spec.name} diverged (loss {loss}); lower learning_rate_init")
        report(epoch / epochs, f"epoch {epoch}/{epochs} loss {loss:.5f}")
        stalled = stalled + 1 if loss > best - tol else 0
        best = min(best, loss)
        if stalled >= patience:
            break
    return est


def _fit(est: BaseEstimator, X: np.ndarray, y: np.ndarray) -> None:
    try:
        est.fit(X, y)
    except ValueError as exc:  # sklearn's InvalidParameterError is a ValueError too
        raise DataError(f"{type(est).__name__} cannot fit this data: {exc}")


def _check_xy(X: Any, y: Any, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    X = check_matrix(X, allow_nan=False)
    if X.size > MAX_TRAIN_CELLS:
        raise DataError(f"training data has {X.size} cells; the cap is {MAX_TRAIN_CELLS}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"y must be 1-D with {X.shape[0]} values, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise DataError("y must be numeric (encode class labels as integers)")
    if spec.task == "regression":
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise DataError("y has non-finite values")
    else:
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise DataError("classification labels must be integers")
            y = y.astype(np.int64)
        if np.unique(y).size < 2:
            raise DataError("classification needs at least two classes in y")
    return X, y


def _no_progress(fraction: float, message: str) -> None:
    """Default progress sink."""

