"""The product's two scenarios as drivers, against any running mesh.

Scenario 1 (:func:`run_ml_scenario`): the seed's workflow, data_collection ->
preprocessing -> training -> evaluation -> deployment, run durably by the orchestrator
library; then the deployed model serves single-row predictions, micro-batched.

Scenario 2 (:func:`run_streaming_scenario`): the seed's streaming pipeline. Topics carry a
per-run tag so two runs never cross-feed. The source's ticks enter the first stage through a
credit-controlled stream when that stage says ``pattern = "streaming"`` (else they are
published on ``ticks.<tag>.<symbol>``); every later stage is a pub/sub stage inside its
agent (``start_stage``): it subscribes to the previous stage's prefix and publishes on
``<stage>.<tag>.<symbol>`` (or its ``topic`` param). This driver subscribes to the last
two prefixes and measures tick-to-prediction and tick-to-alert latency from each tick's
timestamp (the time the source scheduled it, on this host's clock).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from agents.common import split_by_symbol
from agents.orchestrator import DEFAULT_STORE, run_workflow
from agents.scenario_report import DRAIN_S
from agents.work.ticks import TickSource
from mesh.aio import AsyncMesh
from mesh.errors import ConfigError, Error
from mesh.pubsub import Message
from mesh.workflow import Event, PipelineSpec, StageSpec, load_pipeline

SEED_WORKFLOW: Final = {
    "data_collection": {"agent": "data_analyst", "timeout": 300},
    "preprocessing": {"agent": "data_analyst", "depends_on": ["data_collection"]},
    "training": {"agent": "ml_trainer", "depends_on": ["preprocessing"]},
    "evaluation": {"agent": "ml_trainer", "depends_on": ["training"]},
    "deployment": {"agent": "inference_service", "depends_on": ["evaluation"]},
}
SEED_PIPELINE: Final = {
    "data_stream": {"source": "stock_api", "rate": "1000/sec"},
    "analysis": {"agent": "data_analyst", "pattern": "streaming"},
    "prediction": {"agent": "ml_trainer", "model": "lstm"},
    "alerts": {"agent": "notification", "threshold": 0.8},
}
DEFAULT_SYMBOLS: Final = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG")
MAX_RATE: Final = 50_000.0


# ---------------------------------------------------------------------- scenario 1
def ml_workflow(dataset: str = "breast_cancer", model: str = "logistic_regression", *,
                hyperparams: Mapping[str, Any] | None = None, retries: int = 1,
                agents: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The seed's workflow dict with params filled in; ``agents`` renames services."""
    steps = {name: dict(body) for name, body in SEED_WORKFLOW.items()}
    steps["data_collection"]["params"] = {"dataset": dataset}
    steps["preprocessing"]["params"] = {"random_state": 42}
    steps["training"]["params"] = {"model": model, "hyperparams": dict(hyperparams or {})}
    for name in ("data_collection", "training", "evaluation", "deployment"):
        steps[name]["retries"] = retries
        steps[name]["backoff"] = 0.2
    for body in steps.values():
        body["agent"] = (agents or {}).get(body["agent"], body["agent"])
    return {"name": "ml_pipeline", "steps": steps}


def _by_shape(outputs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The last step output (in spec order) holding ``keys``: e.g. evaluation's artifact,
    which comes after training's (that has empty metrics)."""
    for value in reversed(list(outputs.values())):
        if isinstance(value, Mapping) and all(k in value for k in keys):
            return value
    return None


async def run_ml_scenario(endpoint: str | None, *, spec: Any = None,
                          store_url: str = DEFAULT_STORE, artifacts_dir: str | Path | None = None,
                          on_event: Callable[[Event], None] | None = None,
                          on_progress: Callable[..., None] | None = None,
                          predictions: int = 200) -> dict[str, Any]:
    """Run the workflow, then serve ``predictions`` single-row requests from the deployed
    model; returns what happened (steps, metrics, deployment, serving) as plain data."""
    t0 = time.perf_counter()
    async with await AsyncMesh.connect(endpoint) as mesh:
        result = await run_workflow(spec or ml_workflow(), store_url=store_url, mesh=mesh,
                                    artifacts_dir=artifacts_dir, on_event=on_event,
                                    on_progress=on_progress)
        out: dict[str, Any] = {
            "run": result.record.id, "state": result.record.state.value,
            "error": result.record.error, "wall_s": time.perf_counter() - t0,
            "steps": [{"name": s.name, "state": s.state.value, "attempt": s.attempt,
                       "duration": s.duration, "instance": s.instance, "error": s.error}
                      for s in result.steps.values()],
            "breakers": result.breakers,
        }
        if not result.succeeded:
            return out
        evaluated = _by_shape(result.outputs, ("metrics", "sha256", "format")) or {}
        deployed = _by_shape(result.outputs, ("version", "versions", "instance")) or {}
        dataset = _by_shape(result.outputs, ("X", "y", "task"))
        out["model"] = evaluated.get("model")
        out["metrics"] = evaluated.get("metrics", {})
        out["deployed"] = {k: deployed.get(k) for k in ("name", "version", "instance")}
        if dataset is not None and deployed and predictions > 0:
            out["serving"] = await serve_predictions(mesh, deployed, dataset, predictions)
    return out


async def serve_predictions(mesh: AsyncMesh, deployed: Mapping[str, Any],
                            dataset: Mapping[str, Any], n: int) -> dict[str, Any]:
    """``n`` concurrent single-row predictions from the instance that deployed the model."""
    dest, name = str(deployed["instance"]), str(deployed["name"])
    X, y = np.asarray(dataset["X"]), np.asarray(dataset["y"])
    rows = np.arange(n) % X.shape[0]
    before = (await mesh.request(dest, "stats", timeout=5))["batching"].get(name, {})
    latencies: list[float] = []

    async def one(i: int) -> Any:
        t = time.perf_counter()
        reply = await mesh.request(dest, "predict", {"name": name, "row": X[i]}, timeout=30)
        latencies.append((time.perf_counter() - t) * 1000)
        return reply["prediction"]

    t0 = time.perf_counter()
    got = await asyncio.gather(*(one(int(i)) for i in rows))
    wall = time.perf_counter() - t0
    after = (await mesh.request(dest, "stats", timeout=5))["batching"].get(name, {})
    batches = after.get("batches", 0) - before.get("batches", 0)
    return {"requests": n, "agreement": float(np.mean(np.asarray(got) == y[rows])),
            "wall_s": wall, "per_s": n / wall if wall > 0 else 0.0,
            "latency_ms": percentiles(latencies), "batches": batches,
            "mean_batch": n / batches if batches else 0.0}


def percentiles(values: Any) -> dict[str, float]:
    """p50/p99/max (and n) of a list of numbers; NaNs when empty."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(arr, [50, 99])
    return {"n": int(arr.size), "p50": float(p50), "p99": float(p99), "max": float(arr.max())}


# ---------------------------------------------------------------------- scenario 2
class _Taps:
    """The driver's subscriptions to the last two stages: latency samples as they arrive."""

    def __init__(self) -> None:
        self.prediction_ms: list[np.ndarray] = []
        self.alert_ms: list[float] = []
        self.alerts: list[dict[str, Any]] = []

    def on_prediction(self, msg: Message) -> None:
        ts = np.asarray(msg.data.get("timestamps", ()), dtype=np.float64)
        self.prediction_ms.append((time.time() - ts) * 1000.0)

    def on_alert(self, msg: Message) -> None:
        now = time.time()
        self.alerts.append(msg.data)
        self.alert_ms.append((now - float(msg.data["ts"])) * 1000.0)


def _rate(pipeline: PipelineSpec, rate: float | None) -> float:
    value = rate if rate is not None else (pipeline.stages[0].rate or 1000.0)
    if not 0 < value <= MAX_RATE:
        raise ConfigError(f"the tick rate must be in (0, {MAX_RATE:g}] per second, got {value}")
    return float(value)


async def run_streaming_scenario(
    endpoint: str | None, *, pipeline: PipelineSpec | Mapping[str, Any] | str | Path | None = None,
    rate: float | None = None, duration: float = 5.0, symbols: list[str] | None = None,
    batch_ms: float = 2.0, seed: int = 0, tag: str | None = None, min_alerts: int = 0,
    max_duration: float | None = None,
) -> dict[str, Any]:
    """Drive the pipeline for ``duration`` seconds (longer, up to ``max_duration``, until
    ``min_alerts`` alerts arrived); returns counts, latencies and every stage's counters."""
    spec = pipeline if isinstance(pipeline, PipelineSpec) else load_pipeline(
        pipeline if pipeline is not None else SEED_PIPELINE)
    source, stages = spec.stages[0], list(spec.stages[1:])
    if not stages or any(s.agent is None for s in stages):
        raise ConfigError("the pipeline needs a source followed by agent stages")
    if any(s.pattern == "streaming" for s in stages[1:]):
        raise ConfigError("only the stage after the source can be fed by a stream")
    tick_rate = _rate(spec, rate)
    syms = list(symbols or source.params.get("symbols") or DEFAULT_SYMBOLS)
    tag = tag or secrets.token_hex(3)
    prefixes = [str(s.params["topic"]) + f".{tag}." if "topic" in s.params
                else f"{s.name}.{tag}." for s in stages]
    taps = _Taps()
    async with await AsyncMesh.connect(endpoint) as mesh:
        running: list[tuple[StageSpec, str, str]] = []  # (stage, instance, stage id)
        subs = []
        try:
            for i in range(len(stages) - 1, 0, -1):  # downstream first: nothing is lost
                running.append(await _start_stage(mesh, stages[i], prefixes[i - 1], prefixes[i]))
            subs.append(await mesh.subscribe(prefixes[-1], taps.on_alert))
            if len(stages) > 1:
                subs.append(await mesh.subscribe(prefixes[-2], taps.on_prediction))
            first = stages[0]
            ticks_prefix = f"ticks.{tag}."
            if first.pattern != "streaming":
                running.append(await _start_stage(mesh, first, ticks_prefix, prefixes[0]))
            src = TickSource(syms, tick_rate, seed, start=time.time())
            feed = await _feed(mesh, first, src, ticks_prefix, prefixes[0], duration,
                               max_duration or duration, batch_ms, min_alerts, taps)
            first_published = feed.get("published")
            counters = await _drain(mesh, running, stages, first_published, taps)
        finally:
            for sub in subs:
                sub.close()
            final = await _stop_stages(mesh, running)
    counters.update(final)
    kinds: dict[str, int] = {}
    for alert in taps.alerts:
        kinds[alert["kind"]] = kinds.get(alert["kind"], 0) + 1
    pred_ms = np.concatenate(taps.prediction_ms) if taps.prediction_ms else np.empty(0)
    return {
        "pipeline": spec.name, "tag": tag, "rate": tick_rate, "symbols": syms,
        "ticks": src.emitted, "feed_s": feed["seconds"],
        "achieved_rate": src.emitted / feed["seconds"] if feed["seconds"] else 0.0,
        "first_stage_pattern": first.pattern,
        "first_stage": {"name": first.name, **{k: v for k, v in feed.items() if k != "seconds"}},
        "alerts": len(taps.alerts), "alert_kinds": kinds,
        "alert_latency_ms": percentiles(taps.alert_ms),
        "prediction_latency_ms": percentiles(pred_ms),
        "stages": counters, "topics": {"ticks": f"ticks.{tag}.", **{
            s.name: p for s, p in zip(stages, prefixes, strict=True)}},
    }


async def _start_stage(mesh: AsyncMesh, stage: StageSpec, subscribe: str, publish: str
                       ) -> tuple[StageSpec, str, str]:
    params = {**{k: v for k, v in stage.params.items() if k != "topic"},
              "subscribe": subscribe, "publish": publish}
    assert stage.agent is not None
    reply = await mesh.request(stage.agent, "start_stage", params, timeout=10)
    return stage, str(reply["instance"]), str(reply["stage"])


async def _feed(mesh: AsyncMesh, first: StageSpec, src: TickSource, ticks_prefix: str,
                publish: str, duration: float, max_duration: float, batch_ms: float,
                min_alerts: int, taps: _Taps) -> dict[str, Any]:
    """Emit ticks on the source's clock, every ``batch_ms``, into a stream or onto topics."""
    interval = max(0.0005, batch_ms / 1000.0)
    stream = None
    if first.pattern == "streaming":
        assert first.agent is not None
        params = {**{k: v for k, v in first.params.items() if k != "topic"}, "publish": publish}
        stream = await mesh.stream(first.agent, first.name, params,
                                   timeout=max_duration + 60).open()
    start = src.start
    stop_at = start + max(duration, max_duration)
    published = 0
    try:
        for _ in range(int((stop_at - start) / interval) + 2):  # bounded by the run's length
            now = time.time()
            elapsed = now - start
            if elapsed >= duration and (len(taps.alerts) >= min_alerts or now >= stop_at):
                break
            ticks = src.poll(min(now, stop_at))
            if ticks["symbols"]:
                if stream is not None:
                    await stream.write(ticks)
                else:
                    for sym, part in split_by_symbol(ticks, ("prices", "timestamps")).items():
                        mesh.publish(ticks_prefix + sym, part)
                        published += 1
            await asyncio.sleep(max(0.0, start + (int(elapsed / interval) + 1) * interval
                                    - time.time()))
        seconds = time.time() - start
        result = await stream.close() if stream is not None else {"published": published}
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    return {"seconds": seconds, **(result or {})}


async def _stage_stats(mesh: AsyncMesh, instance: str, sid: str) -> dict[str, Any]:
    reply = await mesh.request(instance, "stats", timeout=5)
    return dict(reply["stages"].get(sid, {}))


async def _drain(mesh: AsyncMesh, running: list[tuple[StageSpec, str, str]],
                 stages: list[StageSpec], first_published: int | None, taps: _Taps
                 ) -> dict[str, Any]:
    """Wait (bounded) until every stage took in all its upstream published, has nothing
    queued or being processed (``busy``: a batch off the queue whose outputs are not yet
    counted in ``published``), and the alerts published reached this driver; the counters
    as they are then."""
    order = {s.name: i for i, s in enumerate(stages)}
    by_index = sorted(running, key=lambda r: order[r[0].name])
    deadline = time.monotonic() + DRAIN_S
    counters: dict[str, Any] = {}
    while True:
        counters = {stage.name: await _stage_stats(mesh, inst, sid)
                    for stage, inst, sid in by_index}
        upstream = first_published
        settled = True
        for stage, _, _ in by_index:
            c = counters[stage.name]
            if (upstream is not None and c.get("received", 0) < upstream) or c.get("queued") \
                    or c.get("busy"):
                settled = False
            upstream = c.get("published")
        if upstream is not None and len(taps.alerts) < upstream:
            settled = False
        if settled or time.monotonic() > deadline:
            counters["settled"] = settled
            return counters
        await asyncio.sleep(0.05)


async def _stop_stages(mesh: AsyncMesh, running: list[tuple[StageSpec, str, str]]
                       ) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for stage, instance, sid in running:
        try:
            final[stage.name] = await mesh.request(instance, "stop_stage", {"stage": sid},
                                                   timeout=5)
        except Error as exc:
            final[stage.name] = {"error": str(exc)}
    return final
