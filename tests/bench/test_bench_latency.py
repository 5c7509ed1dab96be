"""The latency recorder and the coordinated-omission correction, on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.latency import MAX_CAPACITY, OpenLoop, Recorder, summarize

MS = 1_000_000


def test_summarize_known_percentiles() -> None:
    s = summarize(np.arange(1, 1001, dtype=np.int64) * MS)  # 1..1000 ms
    assert s["count"] == 1000
    # "higher": the recorded sample at or above the rank, never an interpolation
    assert s["p50_ms"] == pytest.approx(501)
    assert s["p95_ms"] == pytest.approx(951)
    assert s["p99_ms"] == pytest.approx(991)
    assert s["p99_9_ms"] == pytest.approx(1000)
    assert s["max_ms"] == pytest.approx(1000)
    assert s["mean_ms"] == pytest.approx(500.5)


def test_summarize_empty_is_nan_not_error() -> None:
    s = summarize(np.empty(0, dtype=np.int64))
    assert s["count"] == 0
    assert math.isnan(s["p99_ms"])


def test_recorder_is_bounded_and_counts_overflow() -> None:
    r = Recorder(3)
    for v in (1, 2, 3, 4, 5):
        r.record(v * MS)
    assert r.count == 3
    assert r.overflow == 2
    assert list(r.samples()) == [MS, 2 * MS, 3 * MS]
    assert r.summary()["overflow"] == 2


@pytest.mark.parametrize("capacity", [0, -1, MAX_CAPACITY + 1])
def test_recorder_rejects_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Recorder(capacity)


def test_schedule_intended_times_and_due() -> None:
    loop = OpenLoop(rate=1000, count=10, t0_ns=5 * MS)
    assert loop.intended_ns(0) == 5 * MS
    assert loop.intended_ns(3) == 8 * MS
    assert list(loop.intended_all()) == [(5 + i) * MS for i in range(10)]
    assert loop.due(4 * MS) == 0
    assert loop.due(5 * MS) == 1
    assert loop.due(7 * MS + 1) == 3
    assert loop.due(10**12) == 10  # never more than count


def _simulate(stall_at: int, stall_ms: float, n: int = 10_000, rate: float = 1000.0) -> OpenLoop:
    """A server answering in 0.1 ms that freezes for ``stall_ms`` when request ``stall_at``
    arrives; the sender is blocked for that time too (a synchronous client), so the
    requests due during the stall go out late, all at once when it ends."""
    loop = OpenLoop(rate, n, t0_ns=0)
    service = int(0.1 * MS)
    free_at = 0  # when the server can next send (and the client next send)
    for i in range(n):
        send = max(loop.intended_ns(i), free_at)
        loop.sent(i, send)
        done = send + service + (int(stall_ms * MS) if i == stall_at else 0)
        loop.replied(i, done)
        free_at = done
    return loop


def test_stall_shows_in_corrected_percentiles_not_in_naive() -> None:
    loop = _simulate(stall_at=5000, stall_ms=1000.0)  # a 1 s stall in a 10 s run at 1k/s
    naive, corrected = loop.naive(), loop.corrected()
    # Naive: one slow sample among 10,000, invisible below p99.99.
    assert naive["p99_ms"] < 1.0
    assert naive["max_ms"] >= 1000.0
    # Corrected: ~1,000 requests were due during the stall and carry it.
    assert corrected["p95_ms"] > 100.0
    assert corrected["p99_ms"] > 500.0
    assert corrected["p50_ms"] < 1.0  # the rest of the run was healthy
    assert loop.send_lag()["p95_ms"] > 100.0  # and the lag is the sender's, as seen


def test_no_stall_corrected_equals_naive() -> None:
    loop = _simulate(stall_at=-1, stall_ms=0.0, n=1000)
    assert loop.corrected()["p99_ms"] == pytest.approx(loop.naive()["p99_ms"])


def test_missing_replies_count_until_end() -> None:
    loop = OpenLoop(rate=1000, count=4, t0_ns=0)
    for i in range(4):
        loop.sent(i, loop.intended_ns(i))
    assert loop.replied(0, MS // 2)
    assert not loop.replied(0, MS)  # a duplicate reply is ignored
    assert not loop.replied(99, MS)  # so is an unknown index
    assert loop.answered == 1
    lat = loop.corrected_ns(end_ns=10 * MS)
    assert sorted(lat.tolist()) == [MS // 2, 7 * MS, 8 * MS, 9 * MS]  # due at 1, 2, 3 ms
    assert loop.corrected_ns().size == 1  # without an end, only answered requests


@pytest.mark.parametrize(("rate", "count"), [(0, 1), (-5, 1), (10, 0)])
def test_open_loop_rejects_bad_arguments(rate: float, count: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        OpenLoop(rate, count, 0)
