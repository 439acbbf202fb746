"""Progress of a long run on stderr: a bar redrawn in place on a terminal, a plain line every tenth otherwise."""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_EVERY = 0.1  # seconds; redrawing on every image would cost more than it shows


class Progress:
    def __init__(self, total: int, *, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream = total, stream
        self.bar = enabled and stream.isatty()
        self.plain = enabled and not self.bar
        self.done = self.failed = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._next_line = max(1, total // 10)

    def write(self, line: str, stream: TextIO) -> None:
        """Print a line to ``stream``; one bound for the terminal clears the bar first and redraws it after."""
        on_screen = self.bar and stream.isatty()  # a line into a file leaves the bar alone
        if on_screen:
            self.stream.write("\r\033[K")
        stream.write(line + "\n")
        stream.flush()
        if on_screen:
            self._draw()

    def advance(self, *, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.bar and (time.monotonic() - self._drawn_at >= REDRAW_EVERY or self.done == self.total):
            self._draw()
        elif self.plain and (self.done % self._next_line == 0 or self.done == self.total):
            self.stream.write(f"clsloc-client: {self._counts()}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _counts(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{self.done}/{self.total} images, {self.failed} failed, {self.done / elapsed:.1f} img/s"

    def _draw(self) -> None:
        filled = BAR_WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self._counts()}\033[K")
        self.stream.flush()
        self._drawn_at = time.monotonic()
