"""The scenarios' steps, each one call: what an agent's action handler wraps.

ML workflow: :func:`collect_step` -> :func:`preprocess_step` -> :func:`train_step` ->
:func:`evaluate_step` -> ``ModelRegistry.deploy``. Streaming: ticks ->
``TickAnalyzer.analyze_batch`` -> :func:`predict_step` -> :func:`alert_step`. Each step
takes the previous step's output and its own params as plain mappings, so the handler
does no more than unpack a request and return the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agents.work.alerts import Notifier
from agents.work.artifacts import ModelArtifact, build_artifact, load_artifact
from agents.work.datasets import Dataset, collect
from agents.work.errors import DataError
from agents.work.models import Progress, evaluate, train
from agents.work.online import OnlinePredictor
from agents.work.preprocess import Prepared, describe, preprocess
from mesh.errors import ConfigError

DEFAULT_MODEL = {"classification": "logistic_regression", "regression": "ridge"}
_PREPROCESS_KEYS = ("impute", "scale", "test_size", "random_state", "stratify")


def collect_step(params: Mapping[str, Any]) -> Dataset:
    """``{"dataset": name}`` or ``{"csv"|"csv_data": ..., "target": col}``."""
    return collect(params)


def preprocess_step(
    dataset: Mapping[str, Any], params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Split and transform; adds ``summary``, :func:`describe` of the raw features."""
    params = _mapping(params, "preprocess params")
    unknown = sorted(set(params) - set(_PREPROCESS_KEYS))
    if unknown:
        raise ConfigError(f"unknown preprocessing params {unknown}")
    _need(dataset, ("X", "y", "task"), "dataset")
    X, names = dataset["X"], dataset.get("feature_names")
    out: dict[str, Any] = dict(preprocess(
        X, dataset["y"], task=dataset["task"], feature_names=names,
        **{k: params[k] for k in _PREPROCESS_KEYS if k in params},
    ))
    out["summary"] = describe(X, names)
    return out


def train_step(
    prepared: Prepared | Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> ModelArtifact:
    """``params``: ``model`` (default per task), ``hyperparams``, ``name``, ``version``."""
    params = _mapping(params, "training params")
    _need(prepared, ("X_train", "y_train", "task"), "preprocessed data")
    task = prepared["task"]
    model = params.get("model", DEFAULT_MODEL.get(task))
    est = train(prepared["X_train"], prepared["y_train"], model=model,
                params=params.get("hyperparams"), progress=progress)
    return build_artifact(
        est, name=str(params.get("name", model)), version=str(params.get("version", "1")),
        task=task, model=model, transform=prepared.get("transform"),
    )


def evaluate_step(artifact: Mapping[str, Any], prepared: Prepared | Mapping[str, Any]
                  ) -> ModelArtifact:
    """The artifact again, with ``metrics`` measured on the held-out rows."""
    _need(prepared, ("X_test", "y_test"), "preprocessed data")
    est = load_artifact(artifact)
    metrics = evaluate(est, prepared["X_test"], prepared["y_test"])
    return {**artifact, "metrics": metrics}  # type: ignore[typeddict-item]


def predict_step(predictor: OnlinePredictor, stats: Mapping[str, Any]) -> dict[str, Any]:
    """P(up) for the ticks of an analysed batch (a symbol's first tick has no return)."""
    _need(stats, ("symbols", "ret", "timestamps"), "tick statistics")
    ret = np.asarray(stats["ret"], dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(ret))
    symbols = [stats["symbols"][i] for i in keep]
    proba = predictor.update_and_predict_batch(symbols, ret[keep])
    return {"symbols": symbols, "probabilities": proba,
            "timestamps": np.asarray(stats["timestamps"], dtype=np.float64)[keep]}


def alert_step(notifier: Notifier, predictions: Mapping[str, Any], *, kind: str = "up"
               ) -> list[dict[str, Any]]:
    """Alerts sent for a batch of predictions, as dicts."""
    sent = notifier.process_batch(predictions["symbols"], predictions["probabilities"],
                                  kind=kind, timestamps=predictions.get("timestamps"))
    return [a.to_dict() for a in sent]


def _need(obj: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(obj, Mapping):
        raise DataError(f"{what} must be a mapping")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{what} lacks {missing}")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping")
    return value
