"""A one-line progress bar for long jobs (``prune``, ``fuzz``, ``bench``) on a terminal.

Written to standard error and only when it is a terminal: a pipe, a file or CI's log gets nothing (the
jobs' own result lines are unchanged), and commands asked for ``--json`` turn it off. A dozen lines of
our own rather than a dependency: the jobs need a count, a bar, the elapsed time and an estimate of what
is left, nothing more.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

WIDTH = 24


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Bar:
    """``label [####....] done/total  elapsed<left  note``, redrawn in place; ``enabled`` None: when
    ``stream`` (standard error) is a terminal."""

    def __init__(
        self, total: int, label: str, *, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(self.stream.isatty()) if enabled is None else enabled
        self.start = time.perf_counter()
        self.done = 0
        self._shown = 0

    def update(self, done: int | None = None, note: str = "") -> None:
        """Advance to ``done`` (default: one more) and redraw."""
        self.done = self.done + 1 if done is None else done
        if not self.enabled:
            return
        filled = min(self.done, self.total) * WIDTH // self.total
        elapsed = time.perf_counter() - self.start
        left = (
            f"<{_clock(elapsed * (self.total - self.done) / self.done)}" if 0 < self.done < self.total else ""
        )
        text = (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total}  "
            f"{_clock(elapsed)}{left}  {note}"
        ).rstrip()
        self.stream.write("\r" + text + " " * max(self._shown - len(text), 0))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        """Erase the bar (before printing a line of its own, or at the end)."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.clear()
