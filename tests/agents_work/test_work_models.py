"""Training and evaluation on real data; progress reporting and cancellation."""

from __future__ import annotations

import numpy as np
import pytest

from agents.work.datasets import load_builtin
from agents.work.errors import DataError
from agents.work.hyperparams import model_names
from agents.work.models import evaluate, train
from agents.work.preprocess import preprocess
from mesh.errors import ConfigError

SMALL = {
    "logistic_regression": {},
    "random_forest": {"n_estimators": 20, "max_depth": 6},
    "gradient_boosting": {"n_estimators": 20},
    "mlp": {"hidden_layer_sizes": [16], "max_iter": 60},
}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_classifiers_on_breast_cancer(cancer, model: str) -> None:
    est = train(cancer["X_train"], cancer["y_train"], model=model, params=SMALL[model])
    m = evaluate(est, cancer["X_test"], cancer["y_test"])
    assert m["n_samples"] == cancer["X_test"].shape[0]
    assert m["accuracy"] > 0.9
    assert m["f1"] > 0.9
    assert m["roc_auc"] > 0.95


@pytest.mark.parametrize(
    ("model", "params", "min_r2"),
    [
        ("ridge", {"alpha": 1.0}, 0.3),
        ("random_forest_regressor", {"n_estimators": 30, "max_depth": 6}, 0.15),
        ("gradient_boosting_regressor", {"n_estimators": 30, "max_depth": 2}, 0.2),
    ],
)
def test_regressors_on_diabetes(diabetes, model: str, params: dict, min_r2: float) -> None:
    est = train(diabetes["X_train"], diabetes["y_train"], model=model, params=params)
    m = evaluate(est, diabetes["X_test"], diabetes["y_test"])
    assert min_r2 < m["r2"] < 1.0
    assert 20 < m["mae"] < 70
    assert m["mae"] <= m["rmse"]
    # The mean predictor's RMSE bounds a model that learned anything.
    baseline = np.sqrt(np.mean((diabetes["y_test"] - diabetes["y_train"].mean()) ** 2))
    assert m["rmse"] < baseline


def test_multiclass_auc_is_one_vs_rest() -> None:
    d = load_builtin("wine")  # three classes
    p = preprocess(d["X"], d["y"], task="classification", random_state=0)
    est = train(p["X_train"], p["y_train"], model="logistic_regression", params={"C": 0.1})
    m = evaluate(est, p["X_test"], p["y_test"])
    assert m["accuracy"] > 0.9
    assert m["roc_auc"] > 0.98
    assert m["f1"] > 0.9
    # With a class missing from y, one-vs-rest AUC is undefined and left out.
    keep = p["y_test"] != 2
    assert "roc_auc" not in evaluate(est, p["X_test"][keep], p["y_test"][keep])


def test_catalogue_lists_models_by_task() -> None:
    assert model_names("classification") == sorted(SMALL)
    assert "ridge" in model_names("regression")
    assert "ridge" not in model_names("classification")


@pytest.mark.parametrize(
    ("model", "params", "expect_calls"),
    [("random_forest", {"n_estimators": 20}, 12), ("mlp", {"max_iter": 5, "tol": 0.0}, 7),
     ("logistic_regression", {}, 2)],
)
def test_progress_is_reported(cancer, model: str, params: dict, expect_calls: int) -> None:
    calls: list[tuple[float, str]] = []
    train(cancer["X_train"], cancer["y_train"], model=model, params=params,
          progress=lambda f, msg: calls.append((f, msg)))
    fractions = [f for f, _ in calls]
    assert len(calls) == expect_calls
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert all(isinstance(msg, str) and msg for _, msg in calls)


class StopTraining(Exception):
    pass


@pytest.mark.parametrize("model", ["random_forest", "gradient_boosting", "mlp"])
def test_progress_callback_cancels_by_raising(cancer, model: str) -> None:
    seen: list[float] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if fraction >= 0.3:
            raise StopTraining

    params = {"max_iter": 50} if model == "mlp" else {"n_estimators": 50}
    with pytest.raises(StopTraining):
        train(cancer["X_train"], cancer["y_train"], model=model, params=params,
              progress=progress)
    assert 0.3 <= seen[-1] < 0.5  # stopped at the first chunk past 30%, not at the end


@pytest.mark.parametrize(
    ("model", "params", "match"),
    [
        ("svm", None, "unknown model"),
        ("random_forest", {"n_estimators": 10**7}, "n_estimators"),
        ("random_forest", {"warm_start": True}, "unknown hyperparameters"),
        ("random_forest", {"bootstrap": 1}, "bootstrap"),
        ("mlp", {"hidden_layer_sizes": [8] * 9}, "hidden_layer_sizes"),
        ("logistic_regression", {"C": -1}, "C must be"),
        ("ridge", {"alpha": float("nan")}, "alpha"),
    ],
)
def test_bad_hyperparameters_are_refused(cancer, model: str, params, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(cancer["X_train"], cancer["y_train"], model=model, params=params)


def test_bad_training_data_is_refused() -> None:
    X = np.ones((20, 3))
    with pytest.raises(DataError, match="two classes"):
        train(X, np.zeros(20), model="logistic_regression")
    with pytest.raises(DataError, match="integers"):
        train(X, np.linspace(0, 1, 20), model="random_forest")
    with pytest.raises(DataError, match="non-finite"):
        train(np.full((20, 3), np.nan), np.arange(20) % 2, model="random_forest")
    with pytest.raises(DataError, match="1-D"):
        train(X, np.arange(10), model="ridge")
