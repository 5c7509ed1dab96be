"""A small terminal view of a run's steps, for ``agp workflow run`` and ``status``.

On a TTY the table is redrawn in place on every event; elsewhere (CI logs, pipes) each event
becomes one plain line, so logs stay readable and greppable. Glyphs fall back to ASCII when
the stream's encoding cannot show them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TextIO

from mesh.workflow.events import Event, EventKind
from mesh.workflow.model import StepState
from mesh.workflow.store import StepRecord

GLYPHS: Final = {
    StepState.PENDING: "·", StepState.RUNNING: "▶", StepState.SUCCEEDED: "✓",
    StepState.FAILED: "✗", StepState.CANCELLED: "⊘", StepState.SKIPPED: "↷",
}
ASCII_GLYPHS: Final = {
    StepState.PENDING: ".", StepState.RUNNING: ">", StepState.SUCCEEDED: "+",
    StepState.FAILED: "x", StepState.CANCELLED: "/", StepState.SKIPPED: "-",
}
MAX_NOTE: Final = 60


@dataclass
class Row:
    """One line of the table."""

    name: str
    state: StepState = StepState.PENDING
    attempt: int = 0
    started: float | None = None
    finished: float | None = None
    note: str = ""

    @classmethod
    def from_record(cls, rec: StepRecord) -> Row:
        return cls(rec.name, rec.state, rec.attempt, rec.started, rec.finished,
                   rec.error or (f"on {rec.instance}" if rec.instance else ""))


def format_duration(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``2m05s``, ``1h02m``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def render_table(rows: Iterable[Row | StepRecord], *, now: float | None = None,
                 ascii_only: bool = False) -> str:
    """The step table as text (no trailing newline)."""
    glyphs = ASCII_GLYPHS if ascii_only else GLYPHS
    now = time.time() if now is None else now
    items = [r if isinstance(r, Row) else Row.from_record(r) for r in rows]
    width = max([len("STEP")] + [len(r.name) for r in items])
    lines = [f"  {'STEP':<{width}}  {'STATE':<10} {'TRY':>3}  {'TIME':>7}  NOTE"]
    for r in items:
        end = r.finished if r.finished is not None else (
            now if r.state is StepState.RUNNING else None)
        took = format_duration(None if r.started is None or end is None else end - r.started)
        note = r.note if len(r.note) <= MAX_NOTE else r.note[:MAX_NOTE - 3] + "..."
        lines.append(f"{glyphs[r.state]} {r.name:<{width}}  {r.state.value:<10} "
                     f"{r.attempt or '':>3}  {took:>7}  {note}".rstrip())
    return "\n".join(lines)


class ProgressDisplay:
    """An ``on_event`` hook that shows progress on ``stream`` (stdout by default)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 ascii_only: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.ascii_only = (not _can_encode(self.stream)) if ascii_only is None else ascii_only
        self.rows: dict[str, Row] = {}
        self._drawn = 0

    def __call__(self, event: Event) -> None:
        self._update(event)
        if self.tty:
            self.refresh()
        else:
            line = self._line(event)
            if line:
                self.stream.write(line + "\n")
                self.stream.flush()

    def refresh(self) -> None:
        """Redraw the table in place (TTY only); call it on a timer to tick running times."""
        if not self.tty:
            return
        table = render_table(self.rows.values(), ascii_only=self.ascii_only)
        up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.stream.write(up + table + "\n")
        self.stream.flush()
        self._drawn = table.count("\n") + 1

    def show(self, records: Mapping[str, StepRecord]) -> None:
        """Print a stored run's steps once (``agp workflow status``)."""
        self.stream.write(render_table(records.values(), ascii_only=self.ascii_only) + "\n")
        self.stream.flush()

    def _update(self, event: Event) -> None:
        if event.steps is not None:
            for name, state in event.steps.items():
                self.rows.setdefault(name, Row(name)).state = state
        if event.step is None:
            return
        row = self.rows.setdefault(event.step, Row(event.step))
        row.attempt = event.attempt or row.attempt
        if event.kind is EventKind.STEP_STARTED:
            row.state, row.started, row.finished, row.note = StepState.RUNNING, event.at, None, ""
        elif event.kind is EventKind.STEP_RETRYING:
            row.state, row.finished = StepState.PENDING, None
            row.note = f"retry in {format_duration(event.delay)}: {event.error or ''}"
        else:
            row.state = _STATE_OF.get(event.kind, row.state)
            row.finished = event.at if event.duration is not None else row.finished
            row.note = event.error or (f"on {event.instance}" if event.instance else "")

    def _line(self, event: Event) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        if event.kind is EventKind.RUN_STARTED:
            return f"{stamp}  run {event.run_id} started ({len(event.steps or {})} steps)"
        if event.kind is EventKind.RUN_FINISHED:
            state = event.run_state.value if event.run_state else "?"
            tail = f": {event.error}" if event.error else ""
            return f"{stamp}  run {event.run_id} {state}{tail}"
        row = self.rows.get(event.step or "")
        if row is None:
            return ""
        glyphs = ASCII_GLYPHS if self.ascii_only else GLYPHS
        parts = [f"{stamp}  {glyphs[row.state]} {row.name}  {row.state.value}"]
        if event.kind is EventKind.STEP_RETRYING:
            parts[0] = f"{stamp}  {glyphs[row.state]} {row.name}  retrying"
        if event.attempt:
            parts.append(f"try {event.attempt}")
        if event.duration is not None:
            parts.append(format_duration(event.duration))
        if row.note:
            parts.append(row.note)
        return "  ".join(parts)


_STATE_OF: Final = {
    EventKind.STEP_SUCCEEDED: StepState.SUCCEEDED, EventKind.STEP_FAILED: StepState.FAILED,
    EventKind.STEP_CANCELLED: StepState.CANCELLED, EventKind.STEP_SKIPPED: StepState.SKIPPED,
}


def _can_encode(stream: TextIO) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "".join(GLYPHS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
