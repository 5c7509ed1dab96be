"""The model catalogue: which estimators a step may ask for, and which hyperparameters.

Hyperparameters arrive in a remote step's params, so each model has an allow-list of
names, each with a checker that bounds the value: an unknown name or an absurd value
(a million trees, a 10,000-wide layer) is a :class:`ConfigError` before any work starts.
Names that the trainer itself manages (``warm_start``, ``verbose``, ``n_jobs``) are not
offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor

from mesh.errors import ConfigError

Checker = Callable[[str, Any], Any]
#: How training reports progress: one fit, growing an ensemble, or epoch by epoch.
Schedule = Literal["once", "ensemble", "epochs"]

MAX_ESTIMATORS: Final = 2_000
MAX_EPOCHS: Final = 10_000
MAX_LAYERS: Final = 5
MAX_UNITS: Final = 1_024


def _int(lo: int, hi: int, *, none_ok: bool = False) -> Checker:
    def check(name: str, v: Any) -> Any:
        if v is None and none_ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{name} must be an int in [{lo}, {hi}], not {v!r}")
        return v
    return check


def _float(lo: float, hi: float, *, lo_open: bool = False) -> Checker:
    def check(name: str, v: Any) -> Any:
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (lo < v if lo_open else lo <= v) and v <= hi)
        if not ok:
            bound = "(" if lo_open else "["
            raise ConfigError(f"{name} must be a number in {bound}{lo}, {hi}], not {v!r}")
        return float(v)
    return check


def _choice(*allowed: Any) -> Checker:
    def check(name: str, v: Any) -> Any:
        # Compare types too: True == 1, but 1 is not a valid choice for a boolean.
        if any(type(a) is type(v) and a == v for a in allowed):
            return v
        raise ConfigError(f"{name} must be one of {list(allowed)}, not {v!r}")
    return check


def _max_features(name: str, v: Any) -> Any:
    if v is None or v in ("sqrt", "log2"):
        return v
    return _float(0.0, 1.0, lo_open=True)(name, v)


def _layers(name: str, v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= MAX_LAYERS:
        raise ConfigError(f"{name} must be a list of 1 to {MAX_LAYERS} layer sizes")
    return tuple(_int(1, MAX_UNITS)(name, u) for u in v)


_SEED = _int(0, 2**32 - 1)
_TREES = {
    "n_estimators": _int(1, MAX_ESTIMATORS),
    "max_depth": _int(1, 64, none_ok=True),
    "min_samples_split": _int(2, 10_000),
    "min_samples_leaf": _int(1, 10_000),
    "max_features": _max_features,
    "random_state": _SEED,
}
_FOREST = {**_TREES, "bootstrap": _choice(True, False)}
_BOOSTING = {
    **_TREES,
    "learning_rate": _float(0.0, 10.0, lo_open=True),
    "subsample": _float(0.0, 1.0, lo_open=True),
    "n_estimators": _int(1, MAX_ESTIMATORS),
}
_MLP = {
    "hidden_layer_sizes": _layers,
    "activation": _choice("relu", "tanh", "logistic"),
    "alpha": _float(0.0, 100.0),
    "learning_rate_init": _float(0.0, 1.0, lo_open=True),
    "batch_size": _int(1, 100_000),
    "max_iter": _int(1, MAX_EPOCHS),
    "tol": _float(0.0, 1.0),
    "n_iter_no_change": _int(1, 1_000),
    "random_state": _SEED,
}
_CLASS_WEIGHT = _choice(None, "balanced")
#: Randomised models are seeded unless the step says otherwise: a re-run of a workflow
#: should train the same model.
_SEEDED: Final = {"random_state": 0}


@dataclass(frozen=True)
class ModelSpec:
    """One trainable model: its estimator class, task, checked params and schedule."""

    name: str
    cls: type[BaseEstimator]
    task: Literal["classification", "regression"]
    schedule: Schedule
    params: Mapping[str, Checker]
    defaults: Mapping[str, Any] = field(default_factory=dict)


CATALOGUE: Final[Mapping[str, ModelSpec]] = {
    s.name: s
    for s in (
        ModelSpec("logistic_regression", LogisticRegression, "classification", "once", {
            "C": _float(0.0, 1e6, lo_open=True), "max_iter": _int(1, MAX_EPOCHS),
            "tol": _float(0.0, 1.0, lo_open=True), "fit_intercept": _choice(True, False),
            "class_weight": _CLASS_WEIGHT, "random_state": _SEED,
        }, {"max_iter": 1000}),
        ModelSpec("random_forest", RandomForestClassifier, "classification", "ensemble",
                  {**_FOREST, "class_weight": _CLASS_WEIGHT}, {"n_estimators": 100, **_SEEDED}),
        ModelSpec("gradient_boosting", GradientBoostingClassifier, "classification",
                  "ensemble", _BOOSTING, {"n_estimators": 100, **_SEEDED}),
        ModelSpec("mlp", MLPClassifier, "classification", "epochs", _MLP,
                  {"hidden_layer_sizes": (64,), "max_iter": 200, **_SEEDED}),
        ModelSpec("ridge", Ridge, "regression", "once", {
            "alpha": _float(0.0, 1e6), "fit_intercept": _choice(True, False),
        }),
        ModelSpec("random_forest_regressor", RandomForestRegressor, "regression", "ensemble",
                  _FOREST, {"n_estimators": 100, **_SEEDED}),
        ModelSpec("gradient_boosting_regressor", GradientBoostingRegressor, "regression",
                  "ensemble", _BOOSTING, {"n_estimators": 100, **_SEEDED}),
        ModelSpec("mlp_regressor", MLPRegressor, "regression", "epochs", _MLP,
                  {"hidden_layer_sizes": (64,), "max_iter": 200, **_SEEDED}),
    )
}


def model_names(task: str | None = None) -> list[str]:
    """Trainable model names, optionally only those for one task."""
    return sorted(n for n, s in CATALOGUE.items() if task is None or s.task == task)


def spec_for(model: str) -> ModelSpec:
    spec = CATALOGUE.get(model) if isinstance(model, str) else None
    if spec is None:
        raise ConfigError(f"unknown model {model!r}; expected one of {model_names()}")
    return spec


def check_params(spec: ModelSpec, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults overlaid with the checked user params; unknown names are refused."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError("hyperparameters must be a mapping")
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameters for {spec.name}: {unknown}; allowed: {sorted(spec.params)}"
        )
    out = dict(spec.defaults)
    for name, value in params.items():
        out[name] = spec.params[name](name, value)
    if "hidden_layer_sizes" in out:
        out["hidden_layer_sizes"] = tuple(out["hidden_layer_sizes"])
    return out
