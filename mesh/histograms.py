"""Histograms for the metrics' hot path: ``observe`` is a bisect and two adds, no lock, no
label dict walk; the buckets are summed only when Prometheus scrapes (see
:mod:`mesh.metrics`)."""

from __future__ import annotations

import bisect

from prometheus_client.core import HistogramMetricFamily

# seconds: from a sub-millisecond local hop to a minute-long training step
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_SERIES = 1000  # label combinations kept per histogram family: a bound on cardinality


class FastHistogram:
    """Cumulative-at-scrape histogram: ``observe`` is a bisect and two int/float adds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        out = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts[:-1], strict=True):
            acc += n
            out.append((_fmt(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def _fmt(bound: float) -> str:
    return repr(float(bound))


class HistogramSet:
    """Histograms by label values, bounded in number (extra combinations go to 'other')."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.series: dict[tuple[str, ...], FastHistogram] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        h = self.series.get(key)
        if h is None:
            if len(self.series) >= MAX_SERIES:
                key = ("other",) * len(self.labels)
                h = self.series.get(key)
            if h is None:
                h = self.series[key] = FastHistogram()
        h.observe(value)

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=list(self.labels))
        for key, h in sorted(self.series.items()):
            fam.add_metric(list(key), h.buckets(), h.total)
        return fam
