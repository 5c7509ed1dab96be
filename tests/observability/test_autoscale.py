"""The supervisor's scaling decision, fed the router's numbers and the time (no processes)."""

from __future__ import annotations

from agents.autoscale import ScalePolicy
from agents.supervisor_config import Scaling

SVC = "demo/ns/worker"


def policy() -> ScalePolicy:
    return ScalePolicy(Scaling(up_queue=2, up_load=0.9, up_after=1.0, down_after=5.0,
                               cooldown=3.0))


def look(p: ScalePolicy, now: float, *, queued: int = 0, inflight: int = 0,
         capacity: int = 10, replicas: int = 1, minimum: int = 1, maximum: int = 3) -> str | None:
    return p.decide(SVC, now, queued=queued, inflight=inflight, capacity=capacity,
                    replicas=replicas, minimum=minimum, maximum=maximum)


def test_hot_for_up_after_adds_one_then_cooldown() -> None:
    p = policy()
    assert look(p, 0.0, queued=5) is None  # hot, but only just
    assert look(p, 0.5, queued=5) is None
    assert look(p, 1.0, queued=5) == "up"
    # still hot, but the new replica is given the cooldown to warm up
    assert look(p, 2.0, queued=5, replicas=2) is None
    assert look(p, 3.9, queued=5, replicas=2) is None
    # after the cooldown the hot clock starts again from its first look past the change
    assert look(p, 4.5, queued=5, replicas=2) == "up"


def test_busy_instances_are_hot_without_a_queue() -> None:
    p = policy()
    assert look(p, 0.0, inflight=9, capacity=10) is None
    assert look(p, 1.0, inflight=9, capacity=10) == "up"
    q = policy()
    assert look(q, 0.0, inflight=8, capacity=10) is None
    assert look(q, 10.0, inflight=8, capacity=10) is None  # 80% < up_load: not hot


def test_a_break_restarts_the_clock() -> None:
    p = policy()
    assert look(p, 0.0, queued=5) is None
    assert look(p, 0.9, queued=1) is None  # the queue fell: not hot any more
    assert look(p, 1.2, queued=5) is None  # hot again, from here
    assert look(p, 2.1, queued=5) is None
    assert look(p, 2.2, queued=5) == "up"


def test_never_past_max_or_below_min() -> None:
    p = policy()
    assert look(p, 0.0, queued=5, replicas=3) is None
    assert look(p, 10.0, queued=5, replicas=3) is None
    assert look(p, 0.0, replicas=1) is None
    assert look(p, 60.0, replicas=1) is None


def test_idle_for_down_after_removes_one() -> None:
    p = policy()
    assert look(p, 0.0, replicas=3) is None
    assert look(p, 4.9, replicas=3) is None
    assert look(p, 5.0, replicas=3) == "down"
    assert look(p, 7.0, replicas=2) is None  # cooldown
    assert look(p, 8.0, replicas=2) is None  # idle clock restarted at 7.0 (first look after)
    assert look(p, 12.0, replicas=2) == "down"


def test_in_flight_work_is_not_idle() -> None:
    p = policy()
    assert look(p, 0.0, inflight=1, replicas=2) is None
    assert look(p, 30.0, inflight=1, replicas=2) is None


def test_services_are_judged_apart() -> None:
    p = policy()
    assert p.decide("a/b/x", 0.0, queued=5, inflight=0, capacity=1, replicas=1, minimum=1,
                    maximum=2) is None
    assert p.decide("a/b/y", 1.0, queued=5, inflight=0, capacity=1, replicas=1, minimum=1,
                    maximum=2) is None  # y's clock began at 1.0, not x's 0.0
    assert p.decide("a/b/x", 1.0, queued=5, inflight=0, capacity=1, replicas=1, minimum=1,
                    maximum=2) == "up"
