"""Streaming analysis of market ticks, and a synthetic tick source to feed it.

:class:`TickAnalyzer` keeps, per symbol, a ring buffer of the last ``window`` prices. A
batch is processed symbol by symbol, vectorised within each symbol: the buffered prices
and the new ones are laid end to end, and cumulative sums give every rolling statistic
for every new tick at once, so a batch of n ticks costs O(n + window) per symbol.

For a tick with price p, over the last ``window`` prices up to and including p:
``mean`` is their mean; ``volatility`` the population std (ddof=0) of the log returns
between them (NaN until there are two returns); ``zscore`` is ``(p - mean) / std`` of the
prices (ddof=0; NaN with fewer than two prices, 0 when they are all equal); ``ret`` is the
log return from the symbol's previous price (NaN for its first tick).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final, TypedDict

import numpy as np

from agents.work.errors import DataError
from agents.work.grouping import MAX_SYMBOL_BYTES, by_symbol, check_symbols
from mesh.errors import ConfigError, TooLarge

MAX_WINDOW: Final = 100_000
MAX_BATCH: Final = 1_000_000
MAX_SYMBOL_LEN: Final = MAX_SYMBOL_BYTES  # bytes (UTF-8): symbols end up in topics


class TickStats(TypedDict):
    """Per-tick results, aligned with the input batch."""

    symbols: list[str]
    prices: np.ndarray
    timestamps: np.ndarray
    mean: np.ndarray
    volatility: np.ndarray
    zscore: np.ndarray
    ret: np.ndarray


class _Ring:
    """The last ``size`` prices of one symbol; ``head`` is where the next one goes."""

    __slots__ = ("buf", "count", "head")

    def __init__(self, size: int) -> None:
        self.buf = np.empty(size, dtype=np.float64)
        self.count = 0
        self.head = 0

    def ordered(self) -> np.ndarray:
        size = self.buf.size
        if self.count < size:
            return self.buf[: self.count]
        return np.concatenate((self.buf[self.head :], self.buf[: self.head]))

    def extend(self, values: np.ndarray) -> None:
        size = self.buf.size
        tail = values[-size:]
        idx = (self.head + np.arange(tail.size)) % size
        self.buf[idx] = tail
        self.head = int((self.head + tail.size) % size)
        self.count = min(size, self.count + values.size)


class TickAnalyzer:
    """Rolling mean, volatility and z-score per symbol over a window of recent ticks."""

    def __init__(self, window: int = 100, *, max_symbols: int = 10_000) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= MAX_WINDOW:
            raise ConfigError(f"window must be an int in [2, {MAX_WINDOW}], not {window!r}")
        if isinstance(max_symbols, bool) or not isinstance(max_symbols, int) or max_symbols < 1:
            raise ConfigError(f"max_symbols must be a positive int, not {max_symbols!r}")
        self.window = window
        self.max_symbols = max_symbols
        self._rings: dict[str, _Ring] = {}
        self.ticks_seen = 0

    @property
    def symbols(self) -> list[str]:
        return list(self._rings)

    def analyze_batch(
        self, symbols: Sequence[str], prices: Any, timestamps: Any | None = None
    ) -> TickStats:
        """Fold a batch of ticks (in arrival order) into the windows; stats for each tick.

        The whole batch is validated before any state changes, so a bad batch is refused
        without a trace.
        """
        syms, px, ts = self._validate(symbols, prices, timestamps)
        n = px.size
        mean = np.full(n, np.nan)
        vol = np.full(n, np.nan)
        z = np.full(n, np.nan)
        ret = np.full(n, np.nan)
        # One pass per distinct symbol; order of ticks within a symbol is kept.
        for sym, idx in by_symbol(syms):
            ring = self._rings.get(sym)
            if ring is None:
                ring = self._rings[sym] = _Ring(self.window)
            old = ring.ordered()
            m, v, zz, r = _rolling(old, px[idx], self.window)
            mean[idx], vol[idx], z[idx], ret[idx] = m, v, zz, r
            ring.extend(px[idx])
        self.ticks_seen += n
        return TickStats(
            symbols=syms, prices=px, timestamps=ts, mean=mean, volatility=vol, zscore=z, ret=ret
        )

    def update(self, symbol: str, price: float, timestamp: float = math.nan) -> dict[str, float]:
        """One tick; the same statistics as :meth:`analyze_batch` as plain floats."""
        out = self.analyze_batch([symbol], [price], [timestamp])
        return {
            "mean": float(out["mean"][0]), "volatility": float(out["volatility"][0]),
            "zscore": float(out["zscore"][0]), "ret": float(out["ret"][0]),
        }

    def _validate(
        self, symbols: Sequence[str], prices: Any, timestamps: Any | None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        if isinstance(symbols, (str, bytes)) or not isinstance(symbols, Sequence):
            raise DataError("symbols must be a list of strings")
        syms = list(symbols)
        if len(syms) > MAX_BATCH:
            raise TooLarge(f"batch of {len(syms)} ticks; the cap is {MAX_BATCH}")
        check_symbols(syms)
        try:
            px = np.asarray(prices, dtype=np.float64).reshape(-1)
            ts = (np.full(px.size, np.nan) if timestamps is None
                  else np.asarray(timestamps, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            raise DataError("prices and timestamps must be numeric arrays")
        if px.size != len(syms) or ts.size != len(syms):
            raise DataError(f"{len(syms)} symbols, {px.size} prices, {ts.size} timestamps")
        if not np.all(np.isfinite(px) & (px > 0)):
            raise DataError("prices must be finite and positive")
        new = {s for s in syms if s not in self._rings}
        if len(self._rings) + len(new) > self.max_symbols:
            raise TooLarge(f"more than {self.max_symbols} symbols tracked")
        return syms, px, ts


def _rolling(
    old: np.ndarray, new: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rolling stats for each of ``new``, given the ``old`` prices that precede them."""
    seq = np.concatenate((old, new))
    k, m = old.size, seq.size
    ends = np.arange(k, m)  # index in seq of each new tick
    starts = np.maximum(0, ends - window + 1)
    counts = (ends - starts + 1).astype(np.float64)
    # Centre before summing squares so cancellation stays small for prices far from 0.
    c = seq - seq[0]
    s1 = np.concatenate(([0.0], np.cumsum(c)))
    s2 = np.concatenate(([0.0], np.cumsum(c * c)))
    sum1 = s1[ends + 1] - s1[starts]
    sum2 = s2[ends + 1] - s2[starts]
    cmean = sum1 / counts
    var = np.maximum(sum2 / counts - cmean * cmean, 0.0)
    mean = cmean + seq[0]
    std = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 1e-12 * np.abs(mean), (seq[ends] - mean) / std, 0.0)
    z[counts < 2] = np.nan
    # Log returns: r[i] is the return into seq[i + 1]; the window of prices [s, e] holds
    # the returns r[s .. e-1].
    r = np.diff(np.log(seq))
    q1 = np.concatenate(([0.0], np.cumsum(r)))
    q2 = np.concatenate(([0.0], np.cumsum(r * r)))
    n_ret = (ends - starts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rmean = (q1[ends] - q1[starts]) / n_ret
        rvar = np.maximum((q2[ends] - q2[starts]) / n_ret - rmean * rmean, 0.0)
    vol = np.where(n_ret >= 2, np.sqrt(rvar), np.nan)
    last_ret = np.full(new.size, np.nan)
    has_prev = ends >= 1
    last_ret[has_prev] = r[ends[has_prev] - 1]
    return mean, vol, z, last_ret


class TickSource:
    """Synthetic ticks: geometric Brownian motion per symbol plus rare jumps.

    The source never sleeps: :meth:`poll` returns the ticks due by the clock value it is
    given (ticks are spaced ``1 / rate_per_s`` apart from ``start``), so the caller paces
    it with its own clock and a test can drive it with a fake one. Symbols are drawn at
    random for each tick. ``tick_vol`` is the std of one tick's log return; a jump adds
    ``+-jump_size`` to the log return with probability ``jump_prob`` per tick, which is
    what makes z-score alerts happen.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        rate_per_s: float,
        seed: int = 0,
        *,
        start: float = 0.0,
        start_price: float = 100.0,
        drift: float = 0.0,
        tick_vol: float = 0.001,
        jump_prob: float = 0.002,
        jump_size: float = 0.02,
        max_batch: int = 100_000,
    ) -> None:
        if isinstance(symbols, (str, bytes)) or not symbols or not all(
            isinstance(s, str) and s for s in symbols
        ):
            raise ConfigError("symbols must be a non-empty list of non-empty strings")
        for name, val in (("rate_per_s", rate_per_s), ("start_price", start_price)):
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
                raise ConfigError(f"{name} must be a positive number, not {val!r}")
        if not (0.0 <= jump_prob <= 1.0) or tick_vol < 0 or jump_size < 0:
            raise ConfigError("jump_prob must be in [0, 1]; tick_vol and jump_size >= 0")
        if max_batch < 1:
            raise ConfigError("max_batch must be >= 1")
        self.symbols = list(symbols)
        self.rate = float(rate_per_s)
        self.start = float(start)
        self.drift, self.tick_vol = float(drift), float(tick_vol)
        self.jump_prob, self.jump_size = float(jump_prob), float(jump_size)
        self.max_batch = int(max_batch)
        self._rng = np.random.default_rng(seed)
        self._last = np.full(len(self.symbols), float(start_price))
        self.emitted = 0
        self.jumps = 0

    def due(self, now: float) -> int:
        """How many ticks are due by ``now`` and not yet emitted."""
        return max(0, int(math.floor((now - self.start) * self.rate)) - self.emitted)

    def poll(self, now: float) -> dict[str, Any]:
        """The ticks due by ``now`` (at most ``max_batch``; the rest stay due)."""
        return self.take(min(self.due(now), self.max_batch))

    def take(self, n: int) -> dict[str, Any]:
        """The next ``n`` ticks regardless of the clock: symbols, prices, timestamps."""
        if n < 0 or n > MAX_BATCH:
            raise ConfigError(f"n must be in [0, {MAX_BATCH}]")
        rng = self._rng
        which = rng.integers(len(self.symbols), size=n)
        steps = self.drift - 0.5 * self.tick_vol**2 + self.tick_vol * rng.standard_normal(n)
        jumps = rng.random(n) < self.jump_prob
        steps[jumps] += self.jump_size * rng.choice((-1.0, 1.0), size=int(jumps.sum()))
        self.jumps += int(jumps.sum())
        prices = np.empty(n)
        for i in np.unique(which):
            idx = np.flatnonzero(which == i)
            path = self._last[i] * np.exp(np.cumsum(steps[idx]))
            prices[idx] = path
            self._last[i] = path[-1]
        ts = self.start + (self.emitted + 1 + np.arange(n)) / self.rate
        self.emitted += n
        return {"symbols": [self.symbols[i] for i in which], "prices": prices, "timestamps": ts}
