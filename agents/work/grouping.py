"""Group a batch's rows by symbol in O(n), keeping arrival order within each symbol.

Comparing a symbol array against each distinct symbol costs O(n x symbols); a dict of
codes and one stable argsort cost O(n log n) at worst, whatever the number of symbols.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def by_symbol(symbols: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(symbol, row indices)`` per distinct symbol, in order of first appearance."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(s, len(index)) for s in symbols), dtype=np.int64,
                        count=len(symbols))
    if not index:
        return
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(index)))[:-1]
    yield from zip(index, np.split(order, bounds), strict=True)
