"""Tiny runs of every raw pyzmq baseline: the SHAPE of each result, never its speed."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bench import baselines as b
from bench import raw_common as common
from bench.report import Report

TINY = 0.2  # seconds of each timed scenario
PCT = ("p50_ms", "p95_ms", "p99_ms", "p99_9_ms", "max_ms")


def _positive(d: dict[str, Any], *keys: str) -> None:
    for k in keys:
        assert k in d, k
        assert math.isfinite(d[k]), (k, d[k])
        assert d[k] > 0, (k, d[k])


def _ordered_percentiles(d: dict[str, Any]) -> None:
    _positive(d, *PCT)
    assert d["p50_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["p99_9_ms"] <= d["max_ms"]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_reqrep_sequential(secure: bool) -> None:
    r = b.reqrep_sequential(count=100, secure=secure)
    assert r["count"] == 100
    assert r["secure"] is secure
    _ordered_percentiles(r)
    _positive(r, "req_per_s")


def test_reqrep_inflight() -> None:
    r = b.reqrep_inflight(duration=TINY, inflight=10)
    _positive(r, "req_per_s", "count")
    _ordered_percentiles(r)
    assert r["inflight"] == 10


def test_reqrep_open_loop() -> None:
    r = b.reqrep_open_loop(rate=1000, duration=TINY)
    assert r["answered"] + r["lost"] == 200
    assert r["corrected"]["count"] == 200  # lost ones count too, up to the end
    _ordered_percentiles(r["corrected"])
    _ordered_percentiles(r["naive"])
    assert "send_lag" in r


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_fire_and_forget(secure: bool) -> None:
    r = b.fire_and_forget(duration=TINY, secure=secure)
    _positive(r, "sent", "sent_per_s", "delivered", "delivered_per_s")
    assert r["delivered"] + r["lost"] == r["sent"]


def test_pubsub_counts_delivered_and_drops() -> None:
    r = b.pubsub(subscribers=2, duration=TINY)
    _positive(r, "published", "published_per_s", "delivered", "delivered_per_s")
    assert r["delivered"] <= 2 * r["published"]
    assert r["drops"] == 2 * r["published"] - r["delivered"]
    assert 0.0 <= r["drop_pct"] <= 100.0
    assert r["duplicates"] == 0
    assert len(r["per_subscriber_per_s"]) == 2


@pytest.mark.parametrize(
    ("relay", "tuned", "secure"),
    [(False, True, False), (True, False, False), (True, True, True)],
    ids=["direct", "relay-default-malloc", "relay-curve"],
)
def test_stream(relay: bool, tuned: bool, secure: bool) -> None:
    r = b.stream(relay=relay, duration=TINY, malloc_tuned=tuned, secure=secure)
    _positive(r, "gb_per_s", "frames", "bytes", "sent")
    assert r["bytes"] == r["frames"] * r["frame"]
    assert r["frames"] <= r["sent"]
    assert (r["relay"], r["malloc_tuned"], r["secure"]) == (relay, tuned, secure)


def test_zap_refuses_a_key_it_does_not_know() -> None:
    """CURVE baselines are only honest if the ZAP handler really checks the client key."""
    keys = common.Keys.new()
    ctx, auth = common.make_context(keys, zap=True)
    try:
        server = common.curve_server(ctx.socket(zmq.ROUTER), keys)
        endpoint = common.bind_loopback(server)
        stranger_pub, stranger_sec = zmq.curve_keypair()
        bad = ctx.socket(zmq.DEALER)
        bad.curve_serverkey = keys.server_public
        bad.curve_publickey, bad.curve_secretkey = stranger_pub, stranger_sec
        mon = bad.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        bad.connect(endpoint)
        bad.send(b"intruder")
        deadline = time.monotonic() + 10
        event = None
        while event is None and time.monotonic() < deadline:
            if mon.poll(int((deadline - time.monotonic()) * 1000) + 1):
                event = recv_monitor_message(mon)["event"]
        assert event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        good = common.curve_client(ctx.socket(zmq.DEALER), keys)
        good.connect(endpoint)
        good.send(b"member")
        assert server.poll(10_000)
        assert server.recv_multipart()[-1] == b"member"
        assert not server.poll(0)
        bad.disable_monitor()
    finally:
        common.close_context(ctx, auth)


# ----------------------------------------------------------------- the suite's wiring
_LAT = {"count": 10.0, "p50_ms": 0.2, "p95_ms": 0.3, "p99_ms": 0.4, "p99_9_ms": 0.5, "max_ms": 0.6}


def _fakes(monkeypatch: pytest.MonkeyPatch, *, broken_stream: bool = False) -> None:
    def stream(**kw: Any) -> dict[str, Any]:
        if broken_stream and kw["relay"]:
            raise RuntimeError("relay down")
        return {"gb_per_s": 2.0, **kw}

    monkeypatch.setattr(b, "reqrep_sequential", lambda **kw: {**_LAT, "req_per_s": 4e3})
    monkeypatch.setattr(b, "reqrep_inflight", lambda **kw: {**_LAT, "req_per_s": 5e4})
    monkeypatch.setattr(b, "reqrep_open_loop", lambda **kw: {"corrected": _LAT, "lost": 1})
    monkeypatch.setattr(b, "fire_and_forget", lambda **kw: {"delivered_per_s": 1e5})
    monkeypatch.setattr(b, "pubsub", lambda **kw: {"delivered_per_s": 1e6, "drop_pct": 1.5})
    monkeypatch.setattr(b, "stream", stream)


def test_suite_fills_the_baseline_column(monkeypatch: pytest.MonkeyPatch) -> None:
    _fakes(monkeypatch)
    rep = Report()
    labels: list[str] = []
    results = b.run_suite(rep, profile="full", progress=labels.append)
    names = b.scenario_names("full")
    assert len(results) == len(labels) == 2 * len(names)
    assert len(rep.raw) == 2 * len(names)
    keys = {(r.pattern, r.scenario, r.unit, r.security) for r in rep.rows}
    for sec in ("off", "on"):
        for want in [
            (b.RR, "sequential p99", "ms"),
            (b.RR, "100 in flight", "req/s"),
            (b.RR, "open loop 10000/s p99.9", "ms"),
            (b.FAF, "throughput", "msg/s"),
            (b.PS, "10 subscribers, delivered", "msg/s"),
            (b.PS, "1 subscriber, dropped", "%"),
            (b.ST, "relay 1 MiB, default malloc", "GB/s"),
        ]:
            assert (*want, sec) in keys
    assert all(r.baseline is not None and r.value is None for r in rep.rows)
    assert any("lost 1" in r.note for r in rep.rows)
    assert not [n for n in b.scenario_names("quick") if "default malloc" in n]  # under a minute


def test_suite_goes_on_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    _fakes(monkeypatch, broken_stream=True)
    rep = Report()
    results = b.run_suite(rep, profile="tiny", security=("off",))
    failed = [k for k, v in results.items() if "error" in v]
    assert failed
    assert all(k.startswith("relay") for k in failed)
    assert any("relay down" in m for m in rep.messages)
    assert any(r.scenario == "direct 1 MiB" for r in rep.rows)
