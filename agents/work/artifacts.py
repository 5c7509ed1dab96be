"""Model artifacts as bytes in a safe format, and their loading with an allow-list.

The bytes are a ``skops.io`` file: a zip of a JSON schema and ``.npy`` arrays, which
loads without unpickling anything. Loading is still treated as decoding untrusted input:
the zip's sizes are capped, the top-level type must be one of the trainable models (read
from the schema before anything is built), and every type skops does not trust by
default must be in a short reviewed list (the tree structure, the MLP optimizers).
Anything else is an :class:`UntrustedArtifact`; a damaged file is an
:class:`ArtifactError`. Never pickle or joblib: loading those runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Final, TypedDict

import numpy as np
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

from agents.work.errors import ArtifactError, UntrustedArtifact
from agents.work.hyperparams import CATALOGUE
from mesh.errors import ConfigError, Error, TooLarge

FORMAT: Final = "skops"
MAX_ARTIFACT_BYTES: Final = 256 * 1024 * 1024
MAX_UNCOMPRESSED_BYTES: Final = 1024 * 1024 * 1024
MAX_SCHEMA_BYTES: Final = 64 * 1024 * 1024

#: Top-level estimator types an artifact may hold ("module.Class").
ALLOWED_ESTIMATORS: Final = frozenset(
    f"{s.cls.__module__}.{s.cls.__name__}" for s in CATALOGUE.values()
)
#: Types inside those estimators that skops does not trust by default; reviewed: plain
#: numeric state, no code.
TRUSTED_INTERNALS: Final = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
})
#: What decoding a damaged or hostile file may raise; mapped to ArtifactError at one place.
_DECODE_ERRORS: Final = (
    zipfile.BadZipFile, zlib.error, json.JSONDecodeError, UnicodeDecodeError, KeyError,
    ValueError, TypeError, AttributeError, IndexError, EOFError, OSError,
)


class _ArtifactExtras(TypedDict, total=False):
    task: str
    model: str
    transform: dict[str, Any] | None


class ModelArtifact(_ArtifactExtras):
    """A trained model as it travels between agents and is stored by the registry."""

    name: str
    version: str
    format: str
    bytes: bytes
    metrics: dict[str, float]
    feature_count: int
    classes: list[Any] | None
    sha256: str


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def serialize_model(est: Any) -> bytes:
    """The estimator as skops bytes; only trainable model types are accepted."""
    if _type_name(est) not in ALLOWED_ESTIMATORS:
        raise ConfigError(f"cannot serialize {_type_name(est)}: not a supported model")
    return bytes(sio.dumps(est))


def load_model(data: bytes) -> Any:
    """Rebuild an estimator from :func:`serialize_model` bytes, refusing unknown types."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError("model data must be bytes")
    data = bytes(data)
    if len(data) > MAX_ARTIFACT_BYTES:
        raise TooLarge(f"model artifact is {len(data)} bytes; the cap is {MAX_ARTIFACT_BYTES}")
    try:
        top = _top_level_type(data)
        if top not in ALLOWED_ESTIMATORS:
            raise UntrustedArtifact(f"artifact holds {top}, which is not a supported model")
        unknown = sorted(set(sio.get_untrusted_types(data=data)) - TRUSTED_INTERNALS)
        if unknown:
            raise UntrustedArtifact(f"artifact holds untrusted types: {unknown}")
        est = sio.loads(data, trusted=sorted(TRUSTED_INTERNALS))
    except Error:
        raise
    except UntrustedTypesFoundException as exc:
        raise UntrustedArtifact(f"artifact holds untrusted types: {exc}")
    except _DECODE_ERRORS as exc:
        raise ArtifactError(f"model artifact is damaged: {type(exc).__name__}: {exc}")
    if _type_name(est) not in ALLOWED_ESTIMATORS:
        raise UntrustedArtifact(f"artifact loaded as {_type_name(est)}, not a supported model")
    return est


def _top_level_type(data: bytes) -> str:
    """Read the top-level type from the schema without building any object."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if sum(i.file_size for i in infos) > MAX_UNCOMPRESSED_BYTES:
            raise TooLarge("model artifact expands beyond the size cap")
        schema_info = zf.getinfo("schema.json")
        if schema_info.file_size > MAX_SCHEMA_BYTES:
            raise TooLarge("model artifact schema is too large")
        schema = json.loads(zf.read(schema_info))
    if not isinstance(schema, dict):
        raise ArtifactError("model artifact schema is not an object")
    return f"{schema.get('__module__')}.{schema.get('__class__')}"


def build_artifact(
    est: Any,
    *,
    name: str,
    version: str = "1",
    metrics: Mapping[str, float] | None = None,
    task: str | None = None,
    model: str | None = None,
    transform: Mapping[str, Any] | None = None,
) -> ModelArtifact:
    """Package a fitted estimator; ``transform`` (from preprocessing) rides along so the
    deployment applies to raw rows exactly what training applied."""
    if not isinstance(name, str) or not name:
        raise ConfigError("artifact name must be a non-empty string")
    data = serialize_model(est)
    classes = getattr(est, "classes_", None)
    art = ModelArtifact(
        name=name, version=str(version), format=FORMAT, bytes=data,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        feature_count=int(est.n_features_in_),
        classes=None if classes is None else np.asarray(classes).tolist(),
        sha256=hashlib.sha256(data).hexdigest(),
        task=task or ("classification" if classes is not None else "regression"),
    )
    if model is not None:
        art["model"] = model
    if transform is not None:
        art["transform"] = dict(transform)
    return art


def validate_artifact(art: Any) -> ModelArtifact:
    """Check an artifact's shape, format and sha256; return it typed, or raise."""
    if not isinstance(art, Mapping):
        raise ArtifactError("an artifact must be a mapping")
    need = ("name", "version", "format", "bytes", "metrics", "feature_count", "classes", "sha256")
    missing = [k for k in need if k not in art]
    if missing:
        raise ArtifactError(f"artifact lacks {missing}")
    if art["format"] != FORMAT:
        raise ArtifactError(f"artifact format {art['format']!r} is not {FORMAT!r}")
    data = art["bytes"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError("artifact 'bytes' must be bytes")
    if not isinstance(art["sha256"], str) or hashlib.sha256(data).hexdigest() != art["sha256"]:
        raise ArtifactError("artifact sha256 does not match its bytes: it was altered")
    fc = art["feature_count"]
    if isinstance(fc, bool) or not isinstance(fc, int) or fc < 1:
        raise ArtifactError("artifact feature_count must be a positive int")
    if not isinstance(art["metrics"], Mapping):
        raise ArtifactError("artifact metrics must be a mapping")
    return art  # type: ignore[return-value]


def load_artifact(art: Any) -> Any:
    """Validate an artifact and load its estimator; its shape must match the metadata."""
    art = validate_artifact(art)
    est = load_model(art["bytes"])
    if int(getattr(est, "n_features_in_", -1)) != art["feature_count"]:
        raise ArtifactError("artifact feature_count does not match its model")
    classes = getattr(est, "classes_", None)
    declared = art["classes"]
    actual = None if classes is None else np.asarray(classes).tolist()
    if declared is not None and list(declared) != actual:
        raise ArtifactError("artifact classes do not match its model")
    return est
