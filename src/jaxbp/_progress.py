"""A dependency-free progress line for long runs: redrawn in place on a terminal, sparse in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done, text)` after each unit of work; `close()` at the end."""

    def __init__(self, total: int, *, enabled: bool | None = None, stream: TextIO | None = None):
        self.total, self.stream = total, stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = tty if enabled is None else enabled
        self.tty, self.start, self.shown = tty, time.perf_counter(), False
        # In a log file, about ten lines per run instead of one per epoch.
        self.every = 1 if tty else max(1, total // 10)

    def update(self, done: int, text: str = "") -> None:
        if not self.enabled or (not self.tty and done % self.every and done != self.total):
            return
        filled = round(20 * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} {text} ({elapsed:.1f} s)"
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.enabled and self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
