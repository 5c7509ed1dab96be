"""The progress line ``make bench`` shows while it runs (on stderr: stdout keeps the table)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


class Progress:
    """One status line on stderr: rewritten in place on a TTY, one line per step otherwise."""

    def __init__(self, total: int | None = None, stream: TextIO | None = None) -> None:
        self.total = total
        self.n = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()

    def step(self, label: str) -> None:
        """Announce the next step."""
        self.n += 1
        of = f"/{self.total}" if self.total else ""
        self._show(f"[{self.n}{of} {time.monotonic() - self._t0:5.0f}s] {label}")

    def _show(self, text: str) -> None:
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r\x1b[2K" + text[: max(10, cols - 1)])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, text: str = "") -> None:
        """Clear the line (TTY) and optionally leave a final one."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        if text:
            self.stream.write(text + "\n")
        self.stream.flush()
