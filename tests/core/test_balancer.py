"""Balancing policies over fake instances (pure logic; the shares test uses real processes)."""

from __future__ import annotations

from collections import Counter

from router.balancer import LeastOutstanding, RoundRobin, SmoothWeightedRoundRobin
from router.table import Peer, RoutingTable


def _table(weights: list[int], capacity: int = 10) -> tuple[RoutingTable, list]:
    t = RoutingTable()
    insts = []
    for i, w in enumerate(weights):
        peer = Peer(f"rid{i}".encode(), f"p{i}", 1, None)
        insts.append(t.add_instance(peer, b"a/b/svc", f"i{i}".encode(), capacity=capacity,
                                    weight=w, policy=1))
    return t, insts


def test_smooth_weighted_round_robin_spreads_3_to_1() -> None:
    _, insts = _table([3, 1])
    policy = SmoothWeightedRoundRobin()
    picks = [policy.pick(insts).name for _ in range(8)]
    assert Counter(picks) == {b"a/b/svc/i0": 6, b"a/b/svc/i1": 2}
    assert picks[:4] != [b"a/b/svc/i0"] * 3 + [b"a/b/svc/i1"]  # interleaved, not bursty


def test_round_robin_skips_full_and_draining_instances() -> None:
    _, insts = _table([1, 1, 1], capacity=1)
    insts[0].inflight[(b"c", 1)] = ([], 0.0, 0)
    insts[1].accepting = False
    rr = RoundRobin()
    assert {rr.pick(insts).name for _ in range(4)} == {b"a/b/svc/i2"}
    insts[2].inflight[(b"c", 2)] = ([], 0.0, 0)
    assert rr.pick(insts) is None
    assert rr.pick(insts, need_room=False) is not None


def test_least_outstanding_prefers_idle_per_weight() -> None:
    _, insts = _table([1, 2])
    for i in range(2):
        insts[0].inflight[(b"c", i)] = ([], 0.0, 0)
        insts[1].inflight[(b"c", 10 + i)] = ([], 0.0, 0)
    assert LeastOutstanding().pick(insts) is insts[1]  # 2/2 < 2/1


def test_short_names_resolve_when_unique() -> None:
    t, insts = _table([1])
    assert t.resolve(b"svc") is insts[0].service
    assert t.resolve(b"a/b/svc/i0") is insts[0]
    peer = Peer(b"x", "x", 1, None)
    t.add_instance(peer, b"other/ns/svc", b"i9", capacity=1, weight=1, policy=0)
    assert t.resolve(b"svc") is None  # ambiguous short name
    t.remove_instance(insts[0])
    assert t.resolve(b"svc").name == b"other/ns/svc"
