"""Tiny gRPC (and Redis, when installed) peer runs: the shape of the results, and the hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import peers
from bench.progress import Progress
from bench.report import Report

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


def test_grpc_over_tls_runs_or_says_why_not() -> None:
    pair = peers.tls_pair()
    if pair is None:  # no openssl: the suite says the TLS rows were skipped (see below)
        assert peers.shutil.which("openssl") is None
        return
    key, cert = pair
    assert b"PRIVATE KEY" in key
    assert b"CERTIFICATE" in cert
    r = peers.grpc_scenario("sequential", TINY, pair)
    assert r["req_per_s"] > 0


def test_redis_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import peer_redis

    monkeypatch.setattr(peer_redis.shutil, "which", lambda name: None)
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
        rep.add(peers.ST, "server stream 1 MiB", 0.9, "GB/s", security="on")

    rep = peers.run("tiny", mesh=mesh, progress=Progress(total=8, stream=_Sink()))
    assert seen == [TINY]
    for sec, value in (("off", 1.5), ("on", 0.9)):  # gRPC without TLS, and over TLS
        if sec == "on" and peers.tls_pair() is None:
            continue
        row = next(r for r in rep.rows
                   if r.scenario == "server stream 1 MiB" and r.security == sec)
        assert row.value == value
        assert row.baseline is not None
        assert row.ratio is not None
    paths = rep.write(tmp_path, stem="peers", plot="peers-latency.png")
    data = json.loads(paths["json"].read_text())
    tls = ("off", "on") if peers.tls_pair() is not None else ("off",)
    assert {f"grpc/{m}/{sec}" for m in ("sequential", "inflight", "stream")
            for sec in tls} <= set(data["raw"])
    if len(tls) == 1:
        assert any("gRPC over TLS skipped" in m for m in data["messages"])
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
