"""inference_service: deploys model versions and serves predictions, micro-batched.

``deployment`` checks a candidate before it serves (artifact verified, probe predicted,
optional metric floors) and swaps it in atomically; a candidate that fails is never exposed
and the previous version keeps serving (``HealthCheckFailed`` says why). ``rollback`` goes
back one version by hand. ``predict`` with one ``row`` joins a micro-batch (concurrent
callers share one model call); with ``rows`` it predicts them in one call. One registry
per model name; a deploy reaches the one instance that served it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from agents.base import Context, action
from agents.common import WorkAgent, find_input, step_parts, work
from agents.work.batching import MicroBatcher
from agents.work.deployment import ModelRegistry
from agents.work.errors import DataError, NoModelDeployed
from mesh.errors import ConfigError, TooLarge

ARTIFACT_KEYS: Final = ("format", "bytes", "sha256")
MAX_MODELS: Final = 32
DEPLOY_OPTIONS: Final = ("name", "min_metrics", "max_error_metrics", "probe", "keep",
                         "artifact")
REGISTRY_SETTINGS: Final = ("probe", "min_metrics", "max_error_metrics", "keep")


class InferenceService(WorkAgent):
    """Versioned model registry with hot swap and rollback; micro-batched predictions."""

    name = "inference_service"
    capacity = 256  # predictions are async and batched: many may wait at once

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registries: dict[str, ModelRegistry] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.default_model: str | None = None
        self._lock = threading.Lock()

    def extra_stats(self) -> dict[str, Any]:
        # (snapshots: a deploy in a pool thread may add a model while this runs on the loop)
        return {"models": {n: r.active_version for n, r in list(self.registries.items())},
                "batching": {n: b.stats() for n, b in list(self.batchers.items())}}

    def _registry(self, params: Mapping[str, Any]) -> tuple[str, ModelRegistry]:
        name = params.get("name") or self.default_model
        if not isinstance(name, str) or not name:
            raise NoModelDeployed("no model is deployed here")
        reg = self.registries.get(name)
        if reg is None:
            raise NoModelDeployed(f"no model named {name!r} is deployed here")
        return name, reg

    @action()
    @work
    def deployment(self, data: Any, ctx: Context) -> Any:
        """Deploy the artifact among the inputs (or ``params["artifact"]``).

        ``min_metrics`` / ``max_error_metrics`` / ``probe`` / ``keep`` are the checks the
        candidate must pass; given, they replace the model's checks once a candidate passes
        them (a failed deploy changes nothing). A model is registered by its first
        successful deploy: a name whose deploys all failed holds no slot of MAX_MODELS.
        """
        params, inputs = step_parts(data)
        unknown = sorted(set(params) - set(DEPLOY_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown deployment params {unknown}")
        art = params.get("artifact") if "artifact" in params else find_input(
            inputs, ARTIFACT_KEYS, "a model artifact")
        if not isinstance(art, Mapping):
            raise DataError("the artifact must be a mapping")
        artifact = {k: v for k, v in art.items() if k != "holdout"}
        name = params.get("name") or artifact.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("the model needs a name")
        settings = {k: params[k] for k in REGISTRY_SETTINGS if k in params}
        if "keep" in settings:
            settings["keep"] = _keep(settings["keep"])
        first = self._first_deploy(name, artifact, settings)
        if first is not None:
            reg, version = first
        else:  # HealthCheckFailed leaves the active version serving and the checks as they were
            reg = self.registries[name]
            version = reg.deploy(artifact, reg.checks_with(**settings) if settings else None)
        self.default_model = name
        return {"name": name, "version": version, "metrics": dict(artifact.get("metrics", {})),
                "sha256": artifact.get("sha256"), "instance": self.instance_name,
                "versions": reg.versions()}

    def _first_deploy(self, name: str, artifact: Mapping[str, Any], settings: dict[str, Any]
                      ) -> tuple[ModelRegistry, int] | None:
        """Create, deploy and only then register ``name``'s registry; None if it exists.
        Under the lock, so a concurrent first deploy of the same name waits for this one."""
        with self._lock:
            if name in self.registries:
                return None
            if len(self.registries) >= MAX_MODELS:
                raise TooLarge(f"{MAX_MODELS} models are deployed here already")
            reg = ModelRegistry(**settings)
            version = reg.deploy(artifact)  # HealthCheckFailed: nothing is registered
            self.registries[name] = reg
            return reg, version

    @action()
    @work
    async def predict(self, data: Any, ctx: Context) -> Any:
        """``{"row": [...]}`` (micro-batched) or ``{"rows": [[...], ...]}``; ``name`` optional."""
        params, _ = step_parts(data)
        name, reg = self._registry(params)
        if "row" in params:
            batcher = self.batchers.get(name)
            if batcher is None:
                batcher = self.batchers[name] = MicroBatcher(
                    lambda X, r=reg: _per_row(r.predict(X)), max_batch=64, max_delay_ms=2.0,
                    offload=True, rule=reg.row_rule)  # rows checked against the live model
            return await batcher.submit(params["row"])
        if "rows" not in params:
            raise DataError("predict needs 'row' or 'rows'")
        return await asyncio.to_thread(reg.predict, params["rows"])

    @action()
    @work
    def versions(self, data: Any, ctx: Context) -> Any:
        """Every retained version of a model, with status active/standby/failed."""
        params, _ = step_parts(data)
        name, reg = self._registry(params)
        return {"name": name, "active": reg.active_version, "versions": reg.versions()}

    @action()
    @work
    def rollback(self, data: Any, ctx: Context) -> Any:
        """Serve the previous healthy version again."""
        params, _ = step_parts(data)
        name, reg = self._registry(params)
        return {"name": name, "version": reg.rollback(), "instance": self.instance_name}

    async def on_stop(self) -> None:
        await super().on_stop()
        for batcher in self.batchers.values():
            await batcher.aclose()


def _keep(value: Any) -> int:
    """``keep``: a positive integer (not 2.5, "5" or True, which int() would take)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"keep must be a positive integer, not {value!r}")
    return int(value)


def _per_row(out: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A batch prediction split into one result per row, for the micro-batcher's callers."""
    preds = np.asarray(out["predictions"])
    proba = out.get("probabilities")
    rows = []
    for i in range(preds.shape[0]):
        row: dict[str, Any] = {"version": out["version"], "prediction": preds[i].item()}
        if proba is not None:
            row["probabilities"] = np.asarray(proba[i], dtype=np.float64)
        rows.append(row)
    return rows


if __name__ == "__main__":
    InferenceService.main()
