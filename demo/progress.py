"""A plain-text progress bar on stderr (no dependency).

On a terminal it redraws one line (``\\r``) at most ten times a second; otherwise (a log, a
test) it prints a line every 10% so the output stays short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

WIDTH = 30


class Progress:
    """Counts work done out of a known total and shows it."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stage = ""
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._last_draw = 0.0
        self._last_decile = -1
        self._started = time.monotonic()

    def set_stage(self, stage: str) -> None:
        """Name what is happening now (shown beside the bar)."""
        self.stage = stage
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units of work done."""
        self.done = min(self.total, self.done + n)
        self._draw()

    def finish(self) -> None:
        """Show 100% and end the line."""
        self.done = self.total
        self._draw(force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, force: bool = False) -> None:
        share = self.done / self.total
        elapsed = time.monotonic() - self._started
        if self._tty:
            now = time.monotonic()
            if not force and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            filled = int(WIDTH * share)
            bar = "#" * filled + "." * (WIDTH - filled)
            line = f"\r[{bar}] {share:4.0%} {elapsed:5.0f} s  {self.stage}"
            self._stream.write(line.ljust(100)[:100])
            self._stream.flush()
            return
        decile = int(share * 10)
        if decile != self._last_decile or force:
            self._last_decile = decile
            self._stream.write(f"demo: {share:4.0%} after {elapsed:4.0f} s  {self.stage}\n")
            self._stream.flush()
