"""Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))]."""

    base: float = 0.05
    cap: float = 2.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        if attempt <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * (2 ** (attempt - 1)))
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)
