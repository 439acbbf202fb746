"""Progress of a long job: a bar with images/s and ETA on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """``update(n, errors)`` as images finish; ``close()`` at the end.

    On a terminal: a tqdm bar (images/s, ETA). Redirected to a file or a pipe:
    one line every ``interval`` seconds. ``quiet``: nothing.
    """

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        desc: str = "scoring",
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ):
        self.stream = stream or sys.stderr
        self.total, self.done, self.errors = total, done, 0
        self.desc, self.quiet, self.interval = desc, quiet, interval
        self.started = self._last = time.monotonic()
        self.first_seconds: float | None = None  # when the first results came (start-up: model, Ray actors)
        self._first = done
        self._bar = None
        if not quiet and self.stream.isatty():
            from clsloc.progress import progress_bar

            self._bar = progress_bar(
                total=total, initial=done, desc=desc, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def update(self, n: int, errors: int = 0) -> None:
        if self.first_seconds is None:
            self.first_seconds = time.monotonic() - self.started
        self.done += n
        self.errors += errors
        if self._bar is not None:
            self._bar.update(n)
            if errors:
                self._bar.set_postfix(errors=self.errors, refresh=False)
        elif not self.quiet and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def rate(self) -> float:
        """Images per second scored by this process (a resumed job's earlier rows not counted)."""
        elapsed = time.monotonic() - self.started
        return (self.done - self._first) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "?"
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {self.done}/{self.total} images ({share:.0f}%), {rate:.1f} img/s, ETA {eta}, "
            f"{self.errors} error(s)"
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
