"""A versioned model registry for the inference service, with hot swap and rollback.

Serving reads one attribute, ``_active``, once per prediction and then works only with
the immutable :class:`_Slot` it got. Deploying builds and checks a complete new slot off
to the side and then rebinds ``_active`` in one assignment, which is atomic in Python; so
a prediction running across a swap finishes on the old model, the next one uses the new,
and none ever sees a half-deployed model or fails because of the swap. Only deploys and
rollbacks take the lock; predictions never wait.

A deploy is checked before it serves: the artifact is verified and loaded, a probe batch
is predicted through the very code path that serves traffic, and optional metric floors
are compared. If any of it fails, the previous version keeps serving (the candidate is
rolled back before it was ever exposed) and :class:`HealthCheckFailed` says why.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from agents.work.artifacts import ModelArtifact, load_artifact, validate_artifact
from agents.work.batching import RowRule
from agents.work.errors import DataError, HealthCheckFailed, NoModelDeployed
from agents.work.models import evaluate
from agents.work.preprocess import apply_transform, check_matrix
from mesh.errors import ConfigError, Error

MAX_PREDICT_ROWS: Final = 1_000_000


@dataclass(frozen=True)
class _Slot:
    """One loaded version; never mutated after construction, so it is safe to share."""

    version: int
    artifact: ModelArtifact
    model: Any
    transform: Mapping[str, Any] | None
    deployed_at: float

    def predict(self, X: Any) -> dict[str, Any]:
        arr = check_matrix(X, allow_nan=self.transform is not None)
        if arr.shape[0] > MAX_PREDICT_ROWS:
            raise DataError(f"{arr.shape[0]} rows; the cap is {MAX_PREDICT_ROWS}")
        fc = self.artifact["feature_count"]
        if arr.shape[1] != fc:
            raise DataError(f"model v{self.version} expects {fc} features, got {arr.shape[1]}")
        if self.transform is not None:
            arr = apply_transform(arr, self.transform)
        out: dict[str, Any] = {"version": self.version, "predictions": self.model.predict(arr)}
        if hasattr(self.model, "predict_proba"):
            out["probabilities"] = self.model.predict_proba(arr)
        return out


@dataclass(frozen=True)
class Checks:
    """What a candidate version must pass, and how many versions are kept; immutable, so
    a deploy can try new checks and keep them only if its candidate passes."""

    probe: np.ndarray | None
    probe_y: np.ndarray | None
    floors: Mapping[str, float]
    ceilings: Mapping[str, float]
    keep: int

    @staticmethod
    def build(*, probe: Any | None = None, probe_y: Any | None = None,
              min_metrics: Mapping[str, float] | None = None,
              max_error_metrics: Mapping[str, float] | None = None, keep: int = 5) -> Checks:
        """Validated checks (ConfigError / DataError says what is wrong)."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError("keep must be a positive int")
        arr = None if probe is None else check_matrix(probe)
        labels = None if probe_y is None else np.asarray(probe_y)
        if labels is not None and (arr is None or labels.shape != (arr.shape[0],)):
            raise ConfigError("probe_y needs a probe with one row per label")
        return Checks(arr, labels, _check_bounds(min_metrics, "min_metrics"),
                      _check_bounds(max_error_metrics, "max_error_metrics"), keep)


class ModelRegistry:
    """Deployed versions of one model name, the active one serving predictions."""

    def __init__(
        self,
        *,
        probe: Any | None = None,
        probe_y: Any | None = None,
        min_metrics: Mapping[str, float] | None = None,
        max_error_metrics: Mapping[str, float] | None = None,
        keep: int = 5,
    ) -> None:
        """``probe`` (raw rows) is predicted on every deploy; with ``probe_y`` the metrics
        are measured on it, otherwise the artifact's own metrics are compared. A version
        needs ``metric >= floor`` for each ``min_metrics`` entry and ``metric <= ceiling``
        for each ``max_error_metrics`` entry (for errors such as ``mae``). ``keep`` bounds
        how many versions stay loaded for rollback. :meth:`checks_with` changes them."""
        self._checks = Checks.build(probe=probe, probe_y=probe_y, min_metrics=min_metrics,
                                    max_error_metrics=max_error_metrics, keep=keep)
        self._lock = threading.Lock()
        self._active: _Slot | None = None
        self._history: list[_Slot] = []  # healthy versions, oldest first; active among them
        self._failed: list[dict[str, Any]] = []
        self._next_version = 1

    def checks_with(self, **changes: Any) -> Checks:
        """The current checks with ``changes`` (the keyword arguments of the constructor),
        validated (ConfigError); pass them to :meth:`deploy`, which keeps them only if the
        candidate passes them: a mistyped probe must not lock out every later deploy."""
        c = self._checks
        current = {"probe": c.probe, "probe_y": c.probe_y, "min_metrics": c.floors,
                   "max_error_metrics": c.ceilings, "keep": c.keep}
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise ConfigError(f"unknown registry settings {unknown}")
        return Checks.build(**{**current, **changes})

    @property
    def active_version(self) -> int | None:
        slot = self._active
        return None if slot is None else slot.version

    def row_rule(self) -> RowRule | None:
        """What the active version takes (its width, whether it imputes NaN), read from one
        slot; None before the first deploy. The micro-batcher checks each row against it."""
        slot = self._active
        if slot is None:
            return None
        return RowRule(int(slot.artifact["feature_count"]), slot.transform is not None)

    def predict(self, X: Any) -> dict[str, Any]:
        """Predict with the active version: ``{version, predictions[, probabilities]}``."""
        slot = self._active  # one read: the whole call uses this version
        if slot is None:
            raise NoModelDeployed("no model version is deployed")
        return slot.predict(X)

    def deploy(self, artifact: Any, checks: Checks | None = None) -> int:
        """Check and activate an artifact; its new version number, or HealthCheckFailed.
        With ``checks`` (from :meth:`checks_with`) the candidate is held to those, and they
        replace the registry's only if it passes."""
        with self._lock:
            version = self._next_version
            self._next_version += 1
            use = checks if checks is not None else self._checks
            try:
                slot = self._build(version, artifact)
                self._health_check(slot, use)
            except Exception as exc:  # any failure of the candidate fails the check
                detail = exc.message if isinstance(exc, Error) else str(exc)
                reason = f"{type(exc).__name__}: {detail}"
                self._failed.append({"version": version, "reason": reason,
                                     "at": time.time()})
                del self._failed[: -self._checks.keep]
                active = self.active_version
                serving = f"version {active} still serves" if active else "nothing serves"
                raise HealthCheckFailed(
                    f"version {version} failed its health check ({reason}); {serving}",
                    details={"version": str(version), "reason": reason,
                             "active_version": str(active)},
                ) from exc
            self._checks = use
            self._history.append(slot)
            self._active = slot  # the swap: one reference assignment
            self._evict()
            return version

    def rollback(self) -> int:
        """Serve the previous healthy version again; the current one is retired."""
        with self._lock:
            current = self._active
            if current is None or len(self._history) < 2:
                raise ConfigError("no previous version to roll back to")
            idx = self._history.index(current)
            if idx == 0:
                raise ConfigError("no previous version to roll back to")
            self._active = self._history[idx - 1]
            del self._history[idx:]
            return self._active.version

    def versions(self) -> list[dict[str, Any]]:
        """Every retained version, oldest first, with status active/standby/failed."""
        active = self._active
        rows = [
            {
                "version": s.version, "status": "active" if s is active else "standby",
                "name": s.artifact["name"], "artifact_version": s.artifact["version"],
                "sha256": s.artifact["sha256"], "metrics": dict(s.artifact["metrics"]),
                "deployed_at": s.deployed_at,
            }
            for s in list(self._history)
        ]
        rows += [{**f, "status": "failed"} for f in list(self._failed)]
        return sorted(rows, key=lambda r: r["version"])

    def _build(self, version: int, artifact: Any) -> _Slot:
        art = validate_artifact(artifact)
        model = load_artifact(art)
        transform = art.get("transform")
        if transform is not None and not isinstance(transform, Mapping):
            raise ConfigError("artifact transform must be a mapping")
        return _Slot(version, art, model, transform, time.time())

    def _health_check(self, slot: _Slot, checks: Checks) -> None:
        fc = slot.artifact["feature_count"]
        probe = checks.probe if checks.probe is not None else np.zeros((4, fc))
        out = slot.predict(probe)
        pred = np.asarray(out["predictions"])
        if pred.shape != (probe.shape[0],):
            raise DataError(f"probe predictions have shape {pred.shape}")
        if pred.dtype.kind == "f" and not np.all(np.isfinite(pred)):
            raise DataError("probe predictions are not finite")
        proba = out.get("probabilities")
        if proba is not None and not np.all((proba >= 0) & (proba <= 1)):
            raise DataError("probe probabilities fall outside [0, 1]")
        if not checks.floors and not checks.ceilings:
            return
        if checks.probe_y is not None:
            X = probe if slot.transform is None else apply_transform(probe, slot.transform)
            metrics = evaluate(slot.model, X, checks.probe_y)
        else:
            metrics = dict(slot.artifact["metrics"])
        for name, floor in checks.floors.items():
            got = metrics.get(name, math.nan)
            if not got >= floor:
                raise DataError(f"metric {name}={got:.4g} is below the floor {floor:.4g}")
        for name, ceiling in checks.ceilings.items():
            got = metrics.get(name, math.nan)
            if not got <= ceiling:
                raise DataError(f"metric {name}={got:.4g} is above the ceiling {ceiling:.4g}")

    def _evict(self) -> None:
        while len(self._history) > self._checks.keep:
            oldest = self._history[0]
            if oldest is self._active:
                break
            del self._history[0]


def _check_bounds(bounds: Mapping[str, float] | None, what: str) -> dict[str, float]:
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise ConfigError(f"{what} must be a mapping of metric name to number")
    out = {}
    for k, v in bounds.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{what} must map metric names to numbers")
        out[k] = float(v)
    return out
