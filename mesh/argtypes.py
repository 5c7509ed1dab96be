"""Bounded command-line values for argparse's ``type=``: a value out of range is a usage
error naming its flag (exit 2). argparse passes string defaults through ``type`` too, so a
bad ``AGP_*`` variable read as a default is refused the same way, not met as a traceback."""

from __future__ import annotations

import math
from collections.abc import Callable


def int_in(low: int, high: int, name: str) -> Callable[[str], int]:
    """An integer in ``low..high``; ``name`` is what argparse's refusal calls the type."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    parse.__name__ = name
    return parse


def seconds(text: str) -> float:
    """A finite, non-negative number of seconds."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):  # (NaN fails both)
        raise ValueError(text)
    return value
