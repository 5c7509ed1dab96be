"""The latency-percentile chart (PNG), drawn with matplotlib's Agg canvas.

matplotlib is the optional ``bench`` extra: without it the chart is skipped with a reason,
never a crash. The object API (``Figure`` + ``FigureCanvasAgg``) is used instead of pyplot
so no global backend or figure state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

#: Percentile keys drawn left to right, with their axis labels.
POINTS: Final = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"), ("p99_9_ms", "p99.9"),
                 ("max_ms", "max"))  # fmt: skip


def plot_latency(
    series: Sequence[dict[str, Any]], path: Path, *, title: str = "latency percentiles"
) -> str | None:
    """Draw one line per series (``label``, ``dashed``, ``percentiles_ms``) into ``path``.

    Returns None when written, or the reason it was skipped.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return f"matplotlib is not installed (pip install matplotlib): {path.name} not drawn"
    if not series:
        return f"no latency figures: {path.name} not drawn"
    fig = Figure(figsize=(10, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(POINTS)))
    palette = [f"C{i}" for i in range(10)]
    colours: dict[
        tuple[Any, ...], str
    ] = {}  # one colour per scenario: agp-mesh solid, baseline dashed
    for s in series:
        key = (s.get("pattern"), s.get("scenario"), s.get("security"))
        colour = colours.setdefault(key, palette[len(colours) % len(palette)])
        pct = s.get("percentiles_ms", {})
        ys = [_finite(pct.get(key)) for key, _ in POINTS]
        if all(y is None for y in ys):
            continue
        ax.plot(
            xs,
            [float("nan") if y is None else y for y in ys],
            marker="o",
            linestyle="--" if s.get("dashed") else "-",
            color=colour,
            label=str(s.get("label", "?")),
        )
    ax.set_xticks(xs, [label for _, label in POINTS])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return None


def _minor_label(v: float, _pos: Any) -> str:
    """Label only the 2s and 5s between decades, so the axis stays readable."""
    if v <= 0:
        return ""
    lead = round(v / 10 ** math.floor(math.log10(v)))
    return f"{v:g}" if lead in (2, 5) else ""


def _finite(v: Any) -> float | None:
    """A positive finite float (log axis), else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 and f != float("inf") else None
