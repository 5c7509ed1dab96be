"""Load-balancing policies over the instances of one service.

Each policy picks among instances that are alive, not draining and below their capacity
(``Instance.has_room``), or returns None when all are full. They run once per request on the
router's hot path, so they are plain loops over a short list with no allocation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.table import Instance


class Policy(Protocol):
    name: str

    def pick(self, instances: list[Instance], need_room: bool = True) -> Instance | None: ...


class RoundRobin:
    """Each instance in turn; skips full ones."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, instances: list[Instance], need_room: bool = True) -> Instance | None:
        n = len(instances)
        start = self._next
        for i in range(n):
            inst = instances[(start + i) % n]
            if inst.accepting and (not need_room or len(inst.inflight) < inst.capacity):
                self._next = (start + i + 1) % n
                return inst
        return None


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 3:1 give A A B A, evenly spread."""

    name = "weighted_round_robin"

    def pick(self, instances: list[Instance], need_room: bool = True) -> Instance | None:
        best: Instance | None = None
        total = 0
        for inst in instances:
            if not inst.accepting or (need_room and len(inst.inflight) >= inst.capacity):
                continue
            inst.current_weight += inst.weight
            total += inst.weight
            if best is None or inst.current_weight > best.current_weight:
                best = inst
        if best is not None:
            best.current_weight -= total
        return best


class LeastOutstanding:
    """The instance with the fewest requests in flight per unit of weight; ties go in turn.
    Taken first-found, every tie went to the first instance: all fire-and-forgets (never
    in flight) and all calls of a lightly loaded service."""

    name = "least_outstanding"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, instances: list[Instance], need_room: bool = True) -> Instance | None:
        best: Instance | None = None
        best_load = 0.0
        best_at = 0
        n = len(instances)
        start = self._next
        for i in range(n):
            at = (start + i) % n
            inst = instances[at]
            if not inst.accepting or (need_room and len(inst.inflight) >= inst.capacity):
                continue
            load = len(inst.inflight) / inst.weight
            if best is None or load < best_load:
                best, best_load, best_at = inst, load, at
        if best is not None:
            self._next = best_at + 1
        return best


POLICIES: dict[int, type[RoundRobin] | type[SmoothWeightedRoundRobin] | type[LeastOutstanding]] = {
    0: RoundRobin,
    1: SmoothWeightedRoundRobin,
    2: LeastOutstanding,
}


def make_policy(code: int) -> Policy:
    """The policy for an ``agp.v1.BalancePolicy`` number; unknown numbers get round robin."""
    return POLICIES.get(code, RoundRobin)()
