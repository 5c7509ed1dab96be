"""inference_service against bad input: a failed first deploy, bad settings, wrong rows.

Real artifacts (trained here, in the test process) deployed on the shared mesh's service.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import pytest

from agents.work.datasets import load_builtin
from agents.work.pipeline import evaluate_step, preprocess_step, train_step
from mesh import HandlerError, Malformed, Mesh


def _artifact(dataset: str, name: str) -> tuple[dict[str, Any], np.ndarray]:
    """A real, evaluated artifact named ``name``, and the dataset's raw rows."""
    ds = load_builtin(dataset)
    prep = preprocess_step(ds)
    art = evaluate_step(train_step(prep, {"name": name, "model": "logistic_regression"}), prep)
    return dict(art), np.asarray(ds["X"])


def _deploy(client: Mesh, **params: Any) -> dict[str, Any]:
    return client.request("inference_service", "deployment", params, timeout=30)


def test_a_failed_first_deploy_registers_nothing_and_locks_in_no_setting(client: Mesh
                                                                         ) -> None:
    name = f"iris-{secrets.token_hex(3)}"
    art, X = _artifact("iris", name)
    with pytest.raises(HandlerError, match="health check"):
        _deploy(client, artifact=art, probe=np.zeros((2, 3)))  # a typo: the model takes 4
    assert name not in client.request("inference_service", "stats")["models"]
    with pytest.raises(HandlerError, match="health check"):
        _deploy(client, artifact=art, min_metrics={"acc": 0.5})  # a misnamed metric
    assert name not in client.request("inference_service", "stats")["models"]
    v1 = _deploy(client, artifact=art)  # the mistakes are not kept: this one deploys
    assert v1["version"] == 1
    assert client.request("inference_service", "predict", {"name": name, "row": X[0]}
                          )["prediction"] == 0


def test_later_deploys_apply_their_settings_only_if_they_pass(client: Mesh) -> None:
    name = f"iris-{secrets.token_hex(3)}"
    art, _ = _artifact("iris", name)
    assert _deploy(client, artifact=art)["version"] == 1
    with pytest.raises(HandlerError, match="health check"):
        _deploy(client, artifact=art, probe=np.zeros((2, 3)))
    assert _deploy(client, artifact=art)["version"] == 3  # the bad probe was not kept
    with pytest.raises(HandlerError, match="below the floor"):
        _deploy(client, artifact=art, min_metrics={"accuracy": 1.01})
    assert _deploy(client, artifact=art, min_metrics={"accuracy": 0.5})["version"] == 5


@pytest.mark.parametrize("keep", [2.5, "5", True, 0])
def test_keep_must_be_a_positive_integer(client: Mesh, keep: object) -> None:
    name = f"iris-{secrets.token_hex(3)}"
    art, _ = _artifact("iris", name)
    with pytest.raises(Malformed, match="keep must be a positive integer"):
        _deploy(client, artifact=art, keep=keep)
    assert name not in client.request("inference_service", "stats")["models"]


def test_row_width_follows_the_deployed_model_not_the_first_caller(client: Mesh) -> None:
    name = f"swap-{secrets.token_hex(3)}"
    iris, iris_x = _artifact("iris", name)
    wine, wine_x = _artifact("wine", name)
    _deploy(client, artifact=iris)
    with pytest.raises(Malformed, match="takes 4|expects 4"):  # (the batcher or the model)
        client.request("inference_service", "predict", {"name": name, "row": [1.0, 2.0]})
    assert client.request("inference_service", "predict",
                          {"name": name, "row": iris_x[0]})["prediction"] == 0
    _deploy(client, artifact=wine)  # hot swap to a model with 13 features
    assert client.request("inference_service", "predict",
                          {"name": name, "row": wine_x[0]})["prediction"] == 0
    with pytest.raises(Malformed, match="the model takes 13"):
        client.request("inference_service", "predict", {"name": name, "row": iris_x[0]})
