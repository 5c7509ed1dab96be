"""One figure from several rounds of the same scenario: the median round, per figure.

A tail percentile from one run on a 2-core VM says as much about the VM's moment as about
the code: raw pyzmq's own p99 at an offered 10,000 req/s printed 1.26 to 3.59 ms across
runs of the same code within an hour (and a CURVE stream's GB/s wanders as much). So the
latency scenarios and the peer-to-peer stream run in rounds (``bench.suite.rounds_of``),
each round's agp-mesh figure right beside its raw baseline's, and the report shows every
figure's median over the rounds (the same for both sides, so their ratio stays fair).
Counts add up over the rounds (a request lost in any round is lost), a maximum is the
largest seen.

Pure functions over result dicts: no sockets, no processes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Final

SUMMED: Final = frozenset({"count", "lost", "answered", "overflow", "sent"})
LARGEST: Final = frozenset({"max_ms"})


def median_of_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' results as one: each number the median of its rounds (counts summed,
    maxima the largest), nested dicts likewise, anything else from the first round.
    Rounds that failed (``"error"`` key) are left out; all failed: the first failure."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        if not rounds:
            raise ValueError("no rounds to combine")
        return dict(rounds[0])
    if len(good) == 1:
        return dict(good[0])
    return _combine(good)


def _combine(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in rounds[0].items():
        values = [r[key] for r in rounds if key in r]
        if isinstance(first, dict) and all(isinstance(v, dict) for v in values):
            out[key] = _combine(values)
        elif _numbers(values):
            out[key] = _one_number(key, values)
        else:
            out[key] = first
    return out


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _one_number(key: str, values: list[Any]) -> float:
    if key in SUMMED:
        return sum(values)
    if key in LARGEST:
        return max(values)
    return statistics.median(values)
