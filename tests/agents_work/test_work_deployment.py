"""Model registry: hot swap under concurrent predictions, health checks, rollback."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agents.work.artifacts import build_artifact, load_artifact
from agents.work.datasets import load_builtin
from agents.work.deployment import ModelRegistry
from agents.work.errors import DataError, HealthCheckFailed, NoModelDeployed
from agents.work.models import evaluate, train
from agents.work.preprocess import apply_transform
from mesh.errors import ConfigError


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_builtin("breast_cancer")


@pytest.fixture(scope="module")
def arts(cancer) -> list[dict]:
    """Three artifacts that disagree on some rows, so a prediction shows its version."""
    out = []
    for model, params in (("logistic_regression", {"C": 0.01}),
                          ("random_forest", {"n_estimators": 3, "max_depth": 2}),
                          ("gradient_boosting", {"n_estimators": 3, "max_depth": 1})):
        est = train(cancer["X_train"], cancer["y_train"], model=model, params=params)
        out.append(build_artifact(est, name="cancer", version=model,
                                  metrics=evaluate(est, cancer["X_test"], cancer["y_test"]),
                                  transform=cancer["transform"]))
    return out


def test_predict_applies_the_training_transform(cancer, raw, arts) -> None:
    reg = ModelRegistry()
    with pytest.raises(NoModelDeployed):
        reg.predict(raw["X"][:2])
    assert reg.deploy(arts[0]) == 1
    assert reg.active_version == 1
    out = reg.predict(raw["X"][:50])  # raw rows: the registry scales them itself
    want = load_artifact(arts[0]).predict(apply_transform(raw["X"][:50], cancer["transform"]))
    np.testing.assert_array_equal(out["predictions"], want)
    assert out["version"] == 1
    assert out["probabilities"].shape == (50, 2)
    assert (out["predictions"] == raw["y"][:50]).mean() > 0.85
    with pytest.raises(DataError, match="expects 30 features"):
        reg.predict(raw["X"][:2, :5])


def test_hot_swap_under_concurrent_predictions(raw, arts) -> None:
    reg = ModelRegistry(probe=raw["X"][:8])
    reg.deploy(arts[0])
    X = raw["X"][:64]
    expected: dict[int, np.ndarray] = {1: reg.predict(X)["predictions"]}
    failures: list[BaseException] = []
    seen: list[tuple[int, np.ndarray]] = []
    stop = threading.Event()
    started = threading.Barrier(5)
    observed = {v: threading.Event() for v in range(1, 8)}

    def client() -> None:
        started.wait(timeout=30)
        while not stop.is_set():
            try:
                out = reg.predict(X)
                seen.append((out["version"], out["predictions"]))
                observed[out["version"]].set()
            except BaseException as exc:  # any failure at all is the bug under test
                failures.append(exc)
                return

    def swapped_while_serving() -> None:
        """Wait until a client has been served by the version now active."""
        assert observed[reg.active_version].wait(timeout=30)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        started.wait(timeout=30)
        swapped_while_serving()  # version 1 served a client before the first swap
        for round_ in range(3):
            for art in arts[1:]:
                v = reg.deploy(art)
                expected.setdefault(v, reg.predict(X)["predictions"])
                swapped_while_serving()
            reg.rollback()
            assert reg.active_version == 2 + 2 * round_
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    assert not failures
    assert {v for v, _ in seen} == {1, 2, 3, 4, 5, 6, 7}  # clients ran across every swap
    for v, pred in seen:  # and every answer is wholly one version's answer
        np.testing.assert_array_equal(pred, expected[v])


def test_failing_health_check_keeps_the_previous_version(cancer, raw, arts) -> None:
    reg = ModelRegistry(min_metrics={"accuracy": 0.9})
    reg.deploy(arts[0])
    weak = build_artifact(
        train(cancer["X_train"], cancer["y_train"], model="random_forest",
              params={"n_estimators": 1, "max_depth": 1}),
        name="cancer", version="weak", metrics={"accuracy": 0.5},
    )
    with pytest.raises(HealthCheckFailed, match="below the floor") as info:
        reg.deploy(weak)
    assert info.value.details["active_version"] == "1"
    assert reg.active_version == 1
    assert reg.predict(raw["X"][:3])["version"] == 1
    rows = reg.versions()
    assert [(r["version"], r["status"]) for r in rows] == [(1, "active"), (2, "failed")]
    assert "accuracy" in rows[1]["reason"]


def test_live_metric_floor_on_probe_labels(raw, arts) -> None:
    reg = ModelRegistry(probe=raw["X"][:100], probe_y=raw["y"][:100],
                        min_metrics={"accuracy": 0.99})
    with pytest.raises(HealthCheckFailed, match="nothing serves"):
        reg.deploy(arts[1])  # a 3-stump forest is not 99% accurate
    assert reg.active_version is None


def test_damaged_artifact_fails_the_deploy(arts) -> None:
    reg = ModelRegistry()
    reg.deploy(arts[0])
    bad = {**arts[1], "bytes": arts[1]["bytes"][:-10]}
    with pytest.raises(HealthCheckFailed, match="altered"):
        reg.deploy(bad)
    with pytest.raises(HealthCheckFailed, match="ArtifactError"):
        reg.deploy({"not": "an artifact"})
    assert reg.active_version == 1


def test_rollback_and_versions(arts) -> None:
    reg = ModelRegistry(keep=2)
    with pytest.raises(ConfigError):
        reg.rollback()
    for art in arts:
        reg.deploy(art)
    assert [r["version"] for r in reg.versions()] == [2, 3]  # keep=2 evicted v1
    assert reg.rollback() == 2
    assert [(r["version"], r["status"]) for r in reg.versions()] == [(2, "active")]
    with pytest.raises(ConfigError, match="no previous"):
        reg.rollback()
    assert reg.versions()[0]["artifact_version"] == "random_forest"
