"""Group a batch's rows by symbol in O(n), keeping arrival order within each symbol.

Comparing a symbol array against each distinct symbol costs O(n x symbols); a dict of
codes and one stable argsort cost O(n log n) at worst, whatever the number of symbols.

:func:`check_symbols` is the one rule for what a symbol may be. Symbols become topic
suffixes (``predictions.<tag>.<symbol>``) and topics are capped at 255 bytes, so a symbol
is capped in UTF-8 bytes, not characters: a stage refuses it before changing any state,
instead of failing at publish time after its state moved on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import numpy as np

from agents.work.errors import DataError

MAX_SYMBOL_BYTES: Final = 64


def check_symbols(symbols: Iterable[object]) -> None:
    """Raise DataError unless every symbol is a non-empty str of at most
    ``MAX_SYMBOL_BYTES`` UTF-8 bytes (distinct symbols are checked once)."""
    seen: set[str] = set()
    for s in symbols:
        if isinstance(s, str) and s in seen:
            continue
        if not isinstance(s, str) or not s or _utf8_len(s) > MAX_SYMBOL_BYTES:
            shown = repr(s)[:48] + ("..." if len(repr(s)) > 48 else "")
            raise DataError(f"symbol {shown} must be a non-empty str of at most "
                            f"{MAX_SYMBOL_BYTES} bytes (UTF-8)")
        seen.add(s)


def _utf8_len(s: str) -> int:
    """Bytes on the wire; a str that cannot be encoded (a lone surrogate) counts as too long."""
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        return MAX_SYMBOL_BYTES + 1


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
