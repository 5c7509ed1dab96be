"""Model artifacts: safe round trip, and refusal of altered or untrusted ones."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from agents.work import artifacts
from agents.work.artifacts import (
    build_artifact,
    load_artifact,
    load_model,
    serialize_model,
    validate_artifact,
)
from agents.work.errors import ArtifactError, UntrustedArtifact
from agents.work.models import evaluate, train
from mesh.errors import ConfigError, TooLarge

MODELS = {
    "logistic_regression": {},
    "random_forest": {"n_estimators": 5, "max_depth": 4},
    "gradient_boosting": {"n_estimators": 5},
    "mlp": {"hidden_layer_sizes": [8], "max_iter": 10},
}


class Gadget:
    """A type no allow-list knows."""


@pytest.mark.parametrize("model", sorted(MODELS))
def test_round_trip_gives_same_predictions(cancer, model: str) -> None:
    est = train(cancer["X_train"], cancer["y_train"], model=model, params=MODELS[model])
    metrics = evaluate(est, cancer["X_test"], cancer["y_test"])
    art = build_artifact(est, name=f"cancer-{model}", version="7", metrics=metrics,
                         model=model, transform=cancer["transform"])
    assert art["format"] == "skops"
    assert art["feature_count"] == 30
    assert art["classes"] == [0, 1]
    assert art["version"] == "7"
    assert len(art["sha256"]) == 64
    assert art["metrics"]["accuracy"] == metrics["accuracy"]
    assert isinstance(art["bytes"], bytes)
    assert b"pickle" not in art["bytes"][:64]
    back = load_artifact(art)
    assert type(back) is type(est)
    np.testing.assert_array_equal(back.predict(cancer["X_test"]), est.predict(cancer["X_test"]))
    np.testing.assert_allclose(back.predict_proba(cancer["X_test"]),
                               est.predict_proba(cancer["X_test"]))


def test_regressor_round_trip(diabetes) -> None:
    est = train(diabetes["X_train"], diabetes["y_train"], model="random_forest_regressor",
                params={"n_estimators": 5})
    art = build_artifact(est, name="diabetes")
    assert art["classes"] is None
    assert art["task"] == "regression"
    np.testing.assert_allclose(load_model(art["bytes"]).predict(diabetes["X_test"]),
                               est.predict(diabetes["X_test"]))


@pytest.fixture(scope="module")
def small_artifact(cancer) -> dict:
    est = train(cancer["X_train"], cancer["y_train"], model="logistic_regression")
    return build_artifact(est, name="lr")


def test_tampered_bytes_are_refused(small_artifact) -> None:
    data = bytearray(small_artifact["bytes"])
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ArtifactError, match="altered"):
        validate_artifact({**small_artifact, "bytes": bytes(data)})
    with pytest.raises(ArtifactError, match="damaged"):
        load_model(bytes(data))  # even without the checksum, the zip CRC catches it
    with pytest.raises(ArtifactError, match="damaged"):
        load_model(b"\x80\x04not a zip at all")


def test_metadata_must_match_the_model(small_artifact) -> None:
    with pytest.raises(ArtifactError, match="feature_count"):
        load_artifact({**small_artifact, "feature_count": 3})
    with pytest.raises(ArtifactError, match="classes"):
        load_artifact({**small_artifact, "classes": [0, 1, 2]})
    with pytest.raises(ArtifactError, match="format"):
        validate_artifact({**small_artifact, "format": "pickle"})
    with pytest.raises(ArtifactError, match="lacks"):
        validate_artifact({"name": "x"})


def test_unknown_top_level_type_is_refused(cancer) -> None:
    knn = KNeighborsClassifier(n_neighbors=3).fit(cancer["X_train"], cancer["y_train"])
    with pytest.raises(UntrustedArtifact, match="KNeighborsClassifier"):
        load_model(sio.dumps(knn))
    with pytest.raises(ConfigError, match="not a supported model"):
        serialize_model(knn)


def test_untrusted_nested_type_is_refused(cancer) -> None:
    lr = LogisticRegression(max_iter=500).fit(cancer["X_train"], cancer["y_train"])
    lr.gadget_ = Gadget()  # smuggled inside an allowed estimator
    with pytest.raises(UntrustedArtifact, match="Gadget"):
        load_model(sio.dumps(lr))


def test_hostile_schema_is_refused_before_loading() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("schema.json", b'{"__module__": "os", "__class__": "system"}')
    with pytest.raises(UntrustedArtifact, match="os.system"):
        load_model(buf.getvalue())


def test_expansion_cap(small_artifact, monkeypatch) -> None:
    monkeypatch.setattr(artifacts, "MAX_UNCOMPRESSED_BYTES", 1000)
    with pytest.raises(TooLarge, match="expands"):
        load_model(small_artifact["bytes"])
