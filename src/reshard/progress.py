"""A one-line progress bar on stderr, for the command line's long operations."""

from __future__ import annotations

import sys
import time

AUTO_MIN_NBYTES = 64 * 1024 * 1024
"""Inputs at least this large get a bar when ``enabled`` is left to decide (on a terminal)."""


class ProgressBar:
    """Shows ``label [####....] 42% done/total MiB``; redraws at most twice a second.

    ``enabled``: True always, False never, None on an interactive stderr for totals of at
    least ``AUTO_MIN_NBYTES``. Call it as ``bar(done, total)`` or ``bar.advance(nbytes)``.
    """

    def __init__(self, label: str, total: int = 0, *, enabled: bool | None = None,
                 width: int = 40) -> None:
        self.label, self.total, self.done, self.width = label, total, 0, width
        self.enabled, self._shown, self._last_draw = enabled, False, 0.0

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self._draw()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def _active(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return self.total >= AUTO_MIN_NBYTES and sys.stderr.isatty()

    def _draw(self) -> None:
        now = time.monotonic()
        finished = self.done >= self.total
        if not self._active() or (now - self._last_draw < 0.5 and not finished):
            return
        self._last_draw, self._shown = now, True
        pct = 100 if self.total <= 0 else min(100, self.done * 100 // self.total)
        fill = self.width * pct // 100
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {pct:3d}% "
                         f"{self.done / 2**20:,.0f}/{self.total / 2**20:,.0f} MiB")
        sys.stderr.flush()

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
