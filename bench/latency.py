"""Latency recording and open-loop measurement corrected for coordinated omission.

Pure: no sockets, no clocks read here except where a caller passes a time in. Samples are
nanoseconds in preallocated numpy arrays so recording on a hot path never allocates.

Why open loop: a closed-loop client that waits for each reply before sending the next one
stops asking while the server stalls, so the stall shows up as ONE slow sample (coordinated
omission). An open-loop client has an intended send time for every request,
``t0 + i / rate``, and latency is measured from that intended time, so every request that
*should* have been sent during a stall carries the stall in its latency.
"""

from __future__ import annotations

from typing import Final

import numpy as np

#: Percentiles every summary reports, with the key suffix used in result dicts.
PERCENTILES: Final = ((50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (99.9, "p99_9"))
#: Hard cap on samples one recorder may hold (8 bytes each: 80 MB).
MAX_CAPACITY: Final = 10_000_000
_NS_PER_MS: Final = 1_000_000.0


def summarize(samples_ns: np.ndarray) -> dict[str, float]:
    """Percentiles, max and mean in milliseconds of nanosecond samples.

    Keys: ``count``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``p99_9_ms``, ``max_ms``,
    ``mean_ms``. ``method="higher"`` picks a recorded sample (never an interpolation that
    no request saw), which is the conservative choice for tail percentiles.
    """
    n = int(samples_ns.size)
    out: dict[str, float] = {"count": float(n)}
    if n == 0:
        for _, key in PERCENTILES:
            out[f"{key}_ms"] = float("nan")
        out["max_ms"] = out["mean_ms"] = float("nan")
        return out
    qs = np.percentile(samples_ns, [q for q, _ in PERCENTILES], method="higher")
    for (_, key), v in zip(PERCENTILES, qs, strict=True):
        out[f"{key}_ms"] = float(v) / _NS_PER_MS
    out["max_ms"] = float(samples_ns.max()) / _NS_PER_MS
    out["mean_ms"] = float(samples_ns.mean()) / _NS_PER_MS
    return out


class Recorder:
    """A bounded store of nanosecond samples; samples past capacity are counted, not kept."""

    __slots__ = ("_buf", "_n", "overflow")

    def __init__(self, capacity: int) -> None:
        if not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, got {capacity}")
        self._buf = np.empty(capacity, dtype=np.int64)
        self._n = 0
        self.overflow = 0

    def record(self, ns: int) -> None:
        """Store one sample (ns); O(1), no allocation."""
        if self._n < self._buf.size:
            self._buf[self._n] = ns
            self._n += 1
        else:
            self.overflow += 1

    @property
    def count(self) -> int:
        """Samples stored (overflow excluded)."""
        return self._n

    def samples(self) -> np.ndarray:
        """A view of the stored samples."""
        return self._buf[: self._n]

    def summary(self) -> dict[str, float]:
        """:func:`summarize` of the stored samples, plus the overflow count."""
        out = summarize(self.samples())
        out["overflow"] = float(self.overflow)
        return out


class OpenLoop:
    """Book-keeping for one open-loop run of ``count`` requests at ``rate`` per second.

    The caller sends request ``i`` once ``now >= intended_ns(i)`` (see :meth:`due`), calls
    :meth:`sent` and later :meth:`replied` with the times it observed. :meth:`corrected`
    measures from the intended time; :meth:`naive` from the actual send time (what a
    closed-loop tool would report), kept only to show the difference.
    """

    __slots__ = ("rate", "count", "t0_ns", "_interval_ns", "_sent", "_reply")

    def __init__(self, rate: float, count: int, t0_ns: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 < count <= MAX_CAPACITY:
            raise ValueError(f"count must be in 1..{MAX_CAPACITY}, got {count}")
        self.rate = float(rate)
        self.count = count
        self.t0_ns = int(t0_ns)
        self._interval_ns = 1e9 / self.rate
        self._sent = np.full(count, -1, dtype=np.int64)
        self._reply = np.full(count, -1, dtype=np.int64)

    def intended_ns(self, i: int) -> int:
        """When request ``i`` should be sent: ``t0 + i / rate``."""
        return self.t0_ns + int(i * self._interval_ns)

    def intended_all(self) -> np.ndarray:
        """Every intended send time as an int64 array."""
        return self.t0_ns + (np.arange(self.count, dtype=np.float64) * self._interval_ns).astype(
            np.int64
        )

    def due(self, now_ns: int) -> int:
        """How many requests (from index 0) should have been sent by ``now_ns``."""
        if now_ns < self.t0_ns:
            return 0
        return min(self.count, int((now_ns - self.t0_ns) / self._interval_ns) + 1)

    def sent(self, i: int, now_ns: int) -> None:
        """Note the actual send time of request ``i``."""
        self._sent[i] = now_ns

    def replied(self, i: int, now_ns: int) -> bool:
        """Note the reply time of request ``i``; False for an unknown or repeated index."""
        if not 0 <= i < self.count or self._reply[i] >= 0:
            return False
        self._reply[i] = now_ns
        return True

    @property
    def answered(self) -> int:
        """Requests with a reply."""
        return int(np.count_nonzero(self._reply >= 0))

    def corrected_ns(self, end_ns: int | None = None) -> np.ndarray:
        """Reply time minus intended time for every answered request.

        With ``end_ns``, a request never answered (lost, or still waiting when the run
        ended) counts as ``end_ns - intended``: a lower bound, but never hidden.
        """
        intended = self.intended_all()
        got = self._reply >= 0
        lat = self._reply[got] - intended[got]
        if end_ns is None:
            return lat
        missing = intended[~got & (intended <= end_ns)]
        return np.concatenate([lat, end_ns - missing])

    def naive_ns(self) -> np.ndarray:
        """Reply time minus actual send time (what coordinated omission reports)."""
        ok = (self._reply >= 0) & (self._sent >= 0)
        return self._reply[ok] - self._sent[ok]

    def corrected(self, end_ns: int | None = None) -> dict[str, float]:
        """:func:`summarize` of :meth:`corrected_ns`."""
        return summarize(self.corrected_ns(end_ns))

    def naive(self) -> dict[str, float]:
        """:func:`summarize` of :meth:`naive_ns`."""
        return summarize(self.naive_ns())

    def send_lag(self) -> dict[str, float]:
        """How late the sender was against its schedule (a sender that cannot keep up)."""
        ok = self._sent >= 0
        return summarize(self._sent[ok] - self.intended_all()[ok])
