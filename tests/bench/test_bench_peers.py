"""Tiny gRPC (and Redis, when installed) peer runs: the shape of the results, and the hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import peers
from bench.report import Progress, Report

TINY = peers.PROFILES["tiny"]


@pytest.mark.parametrize("mode", ["sequential", "inflight"])
def test_grpc_unary(mode: str) -> None:
    r = peers.grpc_scenario(mode, TINY)
    assert r["req_per_s"] > 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_grpc_server_stream() -> None:
    r = peers.grpc_scenario("stream", TINY)
    assert r["gb_per_s"] > 0
    assert r["bytes"] == r["chunks"] * peers.MiB


def test_redis_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    assert peers.redis_missing() == "redis-server is not on PATH"


def test_redis_pubsub_runs_or_says_why_not() -> None:
    why = peers.redis_missing()
    if why is not None:  # Redis is optional: then the suite states the reason (see below)
        assert why in ("redis-server is not on PATH",
                       "redis-py is not installed (pip install redis)")
        return
    r = peers.redis_pubsub(TINY)
    assert r["published"] > 0
    assert 0 < r["delivered"] <= r["published"]
    assert 0.0 <= r["drop_pct"] <= 100.0


def test_run_with_mesh_hook_writes_side_by_side(tmp_path: Path) -> None:
    seen: list[peers.PeerProfile] = []

    def mesh(rep: Report, p: peers.PeerProfile) -> None:
        seen.append(p)
        rep.add(peers.ST, "server stream 1 MiB", 1.5, "GB/s")

    rep = peers.run("tiny", mesh=mesh, progress=Progress(total=5, stream=_Sink()))
    assert seen == [TINY]
    row = next(r for r in rep.rows if r.scenario == "server stream 1 MiB")
    assert row.value == 1.5
    assert row.baseline is not None
    assert row.ratio is not None
    paths = rep.write(tmp_path, stem="peers", plot="peers-latency.png")
    data = json.loads(paths["json"].read_text())
    assert {"grpc/sequential", "grpc/inflight", "grpc/stream"} <= set(data["raw"])
    if peers.redis_missing() is not None:
        assert any("Redis pub/sub skipped" in m for m in data["messages"])
    else:
        assert "redis/pubsub" in data["raw"], data["messages"]
    assert not any("failed" in m for m in data["messages"])


class _Sink:
    """A quiet progress stream."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
