"""What ``make bench`` prints and writes: agp-mesh beside its baseline, and the ratio.

A row is keyed by (pattern, scenario, unit, security); the agp-mesh figure and the baseline
figure may be added at different times (baselines first, then each agp-mesh scenario) and
meet in one row. ``ratio`` is always agp-mesh / baseline: for throughput higher is better,
for latency lower is better. Outputs: a terminal table, ``<stem>.json`` (machine info, every
figure, every baseline, every ratio, every raw result dict, timestamp), ``<stem>.md`` and a
PNG of latency percentiles.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, TextIO

from bench.machine import machine_info
from bench.plot import plot_latency

#: Result-dict keys of a latency summary (bench.latency.summarize) and their row labels.
LATENCY_KEYS: Final = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"),
                       ("p99_9_ms", "p99.9"))  # fmt: skip
#: Units whose figures are better when lower (the rest are throughputs).
LOWER_IS_BETTER: Final = frozenset({"ms", "%"})
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One comparison: the agp-mesh figure, the baseline figure, and their ratio."""

    pattern: str
    scenario: str
    unit: str
    security: str = "off"
    value: float | None = None
    baseline: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """agp-mesh / baseline, when both are known and the baseline is non-zero."""
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


class Report:
    """Collects rows, latency series and raw results; prints and writes them."""

    def __init__(
        self,
        *,
        title: str = "agp-mesh vs raw pyzmq",
        value_label: str = "agp-mesh",
        baseline_label: str = "raw pyzmq",
    ) -> None:
        self.title = title
        self.value_label = value_label
        self.baseline_label = baseline_label
        self._rows: dict[tuple[str, str, str, str], Row] = {}
        self._series: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.raw: dict[str, Any] = {}
        self.messages: list[str] = []

    # ----------------------------------------------------------------- adding figures
    def add(
        self,
        pattern: str,
        scenario: str,
        value: float | None,
        unit: str,
        baseline: float | None = None,
        security: str = "off",
        note: str = "",
    ) -> Row:
        """Add or complete the row (pattern, scenario, unit, security); None leaves a side as is."""
        key = (pattern, scenario, unit, security)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = Row(pattern, scenario, unit, security)
        if value is not None:
            row.value = float(value)
        if baseline is not None:
            row.baseline = float(baseline)
        if note and note not in row.note:
            row.note = f"{row.note}; {note}" if row.note else note
        return row

    def add_baseline(
        self, pattern: str, scenario: str, value: float, unit: str, security: str = "off",
        note: str = "",
    ) -> Row:  # fmt: skip
        """Add only the baseline side of a row."""
        return self.add(pattern, scenario, None, unit, baseline=value, security=security, note=note)

    def add_latency(
        self,
        pattern: str,
        scenario: str,
        summary: dict[str, Any] | None = None,
        baseline: dict[str, Any] | None = None,
        security: str = "off",
        note: str = "",
    ) -> None:
        """Rows "<scenario> p50 .. p99.9" in ms from latency summaries, and a plot series.

        ``summary`` (agp-mesh) and ``baseline`` are dicts as :func:`bench.latency.summarize`
        returns; either may be None.
        """
        for key, label in LATENCY_KEYS:
            v = _get(summary, key)
            b = _get(baseline, key)
            if v is not None or b is not None:
                self.add(pattern, f"{scenario} {label}", v, "ms", b, security, note)
        for src, label, data in (
            (0, self.value_label, summary),
            (1, self.baseline_label, baseline),
        ):
            if data:
                self._series[(label, pattern, scenario, security)] = {
                    "label": f"{label}: {pattern} {scenario} (security {security})",
                    "source": label,
                    "dashed": bool(src),
                    "pattern": pattern,
                    "scenario": scenario,
                    "security": security,
                    "percentiles_ms": {k: _get(data, k) for k in (*dict(LATENCY_KEYS), "max_ms")},
                }

    def add_raw(self, name: str, result: Any) -> None:
        """Keep a scenario's whole result dict for the JSON file."""
        self.raw[name] = result

    def message(self, text: str) -> None:
        """A line printed under the table and kept in the JSON (skips, failures)."""
        self.messages.append(text)

    @property
    def rows(self) -> list[Row]:
        return list(self._rows.values())

    @property
    def series(self) -> list[dict[str, Any]]:
        return list(self._series.values())

    # ----------------------------------------------------------------- output
    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = ["pattern", "scenario", "security", self.value_label, self.baseline_label,
                "ratio", "unit", "note"]  # fmt: skip
        body = [
            [
                r.pattern,
                r.scenario,
                r.security,
                fmt(r.value, r.unit),
                fmt(r.baseline, r.unit),
                "-" if r.ratio is None else f"{r.ratio:.2f}x",
                r.unit,
                r.note,
            ]  # fmt: skip
            for r in self.rows
        ]
        return head, body

    def table(self) -> str:
        """The terminal table, numbers right-aligned."""
        head, body = self._cells()
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        right = {3, 4, 5}

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        sep = "  ".join("-" * w for w in widths)
        lines = [line(head), sep, *(line(b) for b in body)]
        return "\n".join(lines)

    def _legend(self) -> str:
        return (
            f"ratio = {self.value_label} / {self.baseline_label}; latency (ms, %): lower is "
            "better; throughput (req/s, msg/s, GB/s = 1e9 B/s): higher is better"
        )

    def print(self, file: TextIO | None = None) -> None:
        """Print the title, the machine line, the table, the legend and messages."""
        out = file or sys.stdout
        m = machine_info()
        print(f"\n{self.title}", file=out)
        print(
            f"{m['cpu_model']} x{m['cpus']}, {m['memory_gib']} GiB, Python {m['python']}, "
            f"pyzmq {m['pyzmq']} / libzmq {m['libzmq']}, commit {m['git_commit'][:12]}",
            file=out,
        )
        print(self.table(), file=out)
        print(self._legend(), file=out)
        for msg in self.messages:
            print(f"note: {msg}", file=out)

    def markdown(self) -> str:
        """The table as GitHub markdown, with the machine it ran on."""
        head, body = self._cells()
        m = machine_info()
        esc = [[c.replace("|", "\\|") for c in row] for row in (head, *body)]
        lines = [
            f"# {self.title}",
            "",
            f"{_stamp()} on {m['cpu_model']} x{m['cpus']}, {m['memory_gib']} GiB, "
            f"Python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}, "
            f"commit `{m['git_commit']}`",
            "",
            "| " + " | ".join(esc[0]) + " |",
            "|" + "|".join("---:" if i in (3, 4, 5) else "---" for i in range(len(head))) + "|",
            *("| " + " | ".join(r) + " |" for r in esc[1:]),
            "",
            self._legend(),
        ]
        lines += [f"- {msg}" for msg in self.messages]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN and infinities become null)."""
        rows = [{**asdict(r), "ratio": r.ratio} for r in self.rows]
        return _clean(
            {
                "title": self.title,
                "timestamp": _stamp(),
                "machine": machine_info(),
                "labels": {"value": self.value_label, "baseline": self.baseline_label},
                "rows": rows,
                "latency_series": self.series,
                "raw": self.raw,
                "messages": self.messages,
            }
        )

    def write(
        self, directory: Path | str = RESULTS_DIR, *, stem: str = "latest",
        plot: str = "latency.png",
    ) -> dict[str, Path]:  # fmt: skip
        """Write ``<stem>.json``, ``<stem>.md`` and the PNG; return the paths written.

        A PNG that cannot be drawn (no matplotlib) is reported as a message, not raised.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        png = d / plot
        why = plot_latency(self.series, png, title=f"{self.title}: latency percentiles")
        if why is None:
            written["png"] = png
        else:
            self.message(why)
        js = d / f"{stem}.json"
        js.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        written["json"] = js
        md = d / f"{stem}.md"
        md.write_text(self.markdown())
        written["md"] = md
        return written


# --------------------------------------------------------------------------- helpers
def fmt(v: float | None, unit: str) -> str:
    """A figure for a table cell, with the precision its unit deserves."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "ms":
        return f"{v:.3f}"
    if unit in ("req/s", "msg/s"):
        return f"{v:,.0f}"
    if unit in ("GB/s", "%"):
        return f"{v:.2f}"
    return f"{v:.4g}"


def _get(d: dict[str, Any] | None, key: str) -> float | None:
    if not d:
        return None
    v = d.get(key)
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _clean(obj: Any) -> Any:
    """Make ``obj`` strict JSON: non-finite floats -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _clean(obj.item())
    return str(obj)


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
