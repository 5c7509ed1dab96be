"""Each work agent's actions on real data, over the mesh, against real agent processes."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest

from agents.local_mesh import LocalMesh
from agents.work.ticks import TickSource
from mesh import HandlerError, Malformed, Mesh, NoSuchAction
from tests.helpers import wait_for


def _envelope(params: dict | None = None, **inputs: object) -> dict:
    return {"params": params or {}, "inputs": inputs}


def test_data_analyst_collects_preprocesses_describes(client: Mesh) -> None:
    ds = client.request("data_analyst", "data_collection", {"dataset": "iris"})
    assert ds["X"].shape == (150, 4)
    assert ds["task"] == "classification"
    prepared = client.request("data_analyst", "preprocessing",
                              _envelope({"test_size": 0.2, "random_state": 3}, data=ds))
    assert prepared["X_train"].shape == (120, 4)
    assert prepared["X_test"].shape == (30, 4)
    assert abs(float(prepared["X_train"].mean())) < 1e-9  # standard-scaled on training rows
    summary = client.request("data_analyst", "describe", {"X": ds["X"],
                                                          "feature_names": ds["feature_names"]})
    assert summary["sepal length (cm)"]["count"] == 150
    with pytest.raises(Malformed) as bad:
        client.request("data_analyst", "data_collection", {"dataset": "no_such_set"})
    assert bad.value.details["instance"].startswith("test/scn/data_analyst/")
    wine = client.request("data_analyst", "data_collection", {"dataset": "wine"})
    assert wine["X"].shape[0] == 178  # the agent still serves


def test_data_analyst_tick_batches_keep_state_per_session(client: Mesh) -> None:
    src = TickSource(["AAPL", "MSFT"], 1000, seed=1)
    session = secrets.token_hex(4)
    first = client.request("data_analyst", "analyze", {**src.take(50), "session": session})
    second = client.request("data_analyst", "analyze", {**src.take(50), "session": session})
    assert np.isnan(first["ret"]).sum() == 2  # each symbol's very first tick has no return
    assert not np.isnan(second["ret"]).any()  # the session remembers the previous prices
    with pytest.raises(Malformed):
        client.request("data_analyst", "analyze", {"symbols": ["A"], "prices": [-1.0]})


def test_data_analyst_stream_publishes_stats(client: Mesh) -> None:
    prefix = f"stats.{secrets.token_hex(3)}."
    sub = client.subscribe(prefix)
    src = TickSource(["AAPL", "MSFT", "NVDA"], 1000, seed=2)
    with client.stream("data_analyst", "analysis", {"publish": prefix, "window": 20}) as s:
        for _ in range(10):
            s.write(src.take(30))
    assert s.result["ticks"] == 300
    assert s.result["batches"] == 10
    got = [sub.get(timeout=5) for _ in range(s.result["published"])]
    assert {m.topic for m in got} == {prefix + sym for sym in ("AAPL", "MSFT", "NVDA")}
    assert sum(len(m.data["symbols"]) for m in got) == 300
    assert all(np.isfinite(m.data["mean"]).all() for m in got)
    sub.close()


def test_data_analyst_pubsub_stage(client: Mesh) -> None:
    tag = secrets.token_hex(3)
    out = client.subscribe(f"stats.{tag}.")
    stage = client.request("data_analyst", "start_stage",
                           {"subscribe": f"ticks.{tag}.", "publish": f"stats.{tag}."})
    src = TickSource(["AAPL"], 1000, seed=3)
    for _ in range(5):
        client.publish(f"ticks.{tag}.AAPL", src.take(20))
    client.publish(f"ticks.{tag}.AAPL", {"symbols": ["AAPL"], "prices": [0.0]})  # poison
    received = 0
    while received < 100:
        received += len(out.get(timeout=5).data["symbols"])
    wait_for(lambda: client.request(stage["instance"], "stats")["stages"][stage["stage"]]
             ["errors"] == 1, message="the poison message refused")
    final = client.request(stage["instance"], "stop_stage", {"stage": stage["stage"]})
    assert received == 100
    assert final["received"] == 6
    assert final["processed"] == 6
    with pytest.raises(Malformed):
        client.request(stage["instance"], "stop_stage", {"stage": stage["stage"]})
    out.close()


def test_ml_trainer_trains_with_progress_and_evaluates(client: Mesh) -> None:
    ds = client.request("data_analyst", "data_collection", {"dataset": "breast_cancer"})
    prepared = client.request("data_analyst", "preprocessing", _envelope(data=ds))
    progress: list[float] = []
    art = client.request("ml_trainer", "training",
                         _envelope({"model": "random_forest",
                                    "hyperparams": {"n_estimators": 40}}, prep=prepared),
                         timeout=60, on_progress=lambda f, _m: progress.append(f))
    assert progress[0] == 0.0
    assert progress[-1] == 1.0
    assert len(progress) >= 10
    assert progress == sorted(progress)
    assert art["format"] == "skops"
    assert art["holdout"]["X_test"].shape[0] == 143
    evaluated = client.request("ml_trainer", "evaluation", _envelope(training=art))
    assert evaluated["metrics"]["accuracy"] > 0.9
    assert "holdout" not in evaluated
    with pytest.raises(Malformed, match="unknown hyperparameters"):
        client.request("ml_trainer", "training",
                       _envelope({"model": "ridge", "hyperparams": {"depth": 3}}, prep=prepared))
    with pytest.raises(NoSuchAction):
        client.request("ml_trainer", "no_such_action")


def test_ml_trainer_online_prediction(client: Mesh) -> None:
    src = TickSource(["AAPL", "MSFT"], 1000, seed=5)
    session = secrets.token_hex(4)
    stats = client.request("data_analyst", "analyze", {**src.take(400), "session": session})
    preds = client.request("ml_trainer", "prediction",
                           {"symbols": stats["symbols"], "ret": stats["ret"],
                            "timestamps": stats["timestamps"], "session": session})
    p = preds["probabilities"]
    assert p.shape == (398,)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.ptp(p) > 0


def test_inference_service_deploys_swaps_rolls_back(client: Mesh) -> None:
    ds = client.request("data_analyst", "data_collection", {"dataset": "wine"})
    prepared = client.request("data_analyst", "preprocessing", _envelope(data=ds))
    name = f"wine-{secrets.token_hex(3)}"
    arts = [client.request("ml_trainer", "evaluation", _envelope(
        training=client.request("ml_trainer", "training",
                                _envelope({"model": m, "name": name}, prep=prepared),
                                timeout=60))) for m in ("logistic_regression", "random_forest")]
    v1 = client.request("inference_service", "deployment",
                        _envelope({"min_metrics": {"accuracy": 0.8}}, evaluation=arts[0]))
    assert v1["version"] == 1
    one = client.request("inference_service", "predict", {"name": name, "row": ds["X"][0]})
    assert one["version"] == 1
    assert one["prediction"] == ds["y"][0]
    many = client.request("inference_service", "predict", {"name": name, "rows": ds["X"]})
    assert (many["predictions"] == ds["y"]).mean() > 0.9
    tampered = {**arts[1], "sha256": "0" * 64}
    with pytest.raises(HandlerError, match="health check"):
        client.request("inference_service", "deployment", _envelope(evaluation=tampered))
    assert client.request("inference_service", "predict",
                          {"name": name, "row": ds["X"][1]})["version"] == 1
    v3 = client.request("inference_service", "deployment", _envelope(evaluation=arts[1]))
    assert v3["version"] == 3  # version 2 was the candidate that failed its check
    listed = client.request("inference_service", "versions", {"name": name})
    assert listed["active"] == 3
    assert [v["status"] for v in listed["versions"]] == ["standby", "failed", "active"]
    assert client.request("inference_service", "rollback", {"name": name})["version"] == 1
    assert client.request("inference_service", "predict",
                          {"name": name, "row": ds["X"][2]})["version"] == 1


def test_notification_threshold_dedupe_sinks_and_stage(client: Mesh,
                                                       local_mesh: LocalMesh) -> None:
    sym = f"S{secrets.token_hex(3)}"
    assert client.request("notification", "notify", {"symbol": sym, "score": 0.5}) == []
    sent = client.request("notification", "notify", {"symbol": sym, "score": 0.93,
                                                     "kind": "up"})
    assert len(sent) == 1
    assert sent[0]["symbol"] == sym
    assert client.request("notification", "notify", {"symbol": sym, "score": 0.99,
                                                     "kind": "up"}) == []  # de-duplicated
    stats = client.request("notification", "stats")
    assert stats["alerts"]["sent"] >= 1
    assert stats["alerts"]["suppressed"] >= 1
    log = Path(stats["alert_log"])
    assert log.parent == local_mesh.log_dir / "alerts"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(a["symbol"] == sym for a in lines)

    tag = secrets.token_hex(3)
    alerts = client.subscribe(f"alerts.{tag}.")
    stage = client.request("notification", "start_stage",
                           {"subscribe": f"predictions.{tag}.", "publish": f"alerts.{tag}.",
                            "threshold": 0.8})
    client.publish(f"predictions.{tag}.{sym}",
                   {"symbols": [sym, sym], "probabilities": np.array([0.1, 0.95]),
                    "timestamps": np.array([1.0, 2.0])})
    got = [alerts.get(timeout=10), alerts.get(timeout=10)]
    assert sorted(a.data["kind"] for a in got) == ["down", "up"]
    assert all(a.data["latency_ms"] > 0 for a in got)
    final = client.request(stage["instance"], "stop_stage", {"stage": stage["stage"]})
    assert final["published"] == 2
    with pytest.raises(Malformed):
        client.request("notification", "start_stage", {"subscribe": "x.", "threshold": "high"})
    alerts.close()
