"""Progress of a long check run on stderr: a bar with counts and the time left
on a terminal, a plain line every few seconds elsewhere (a log, CI), nothing
with ``--quiet``.  Nothing is shown for a run that ends within its first second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: seconds before the first report, and between two plain lines
FIRST = 1.0
EVERY_LINE = 10.0
EVERY_BAR = 0.2
BAR = 24


def _duration(s: float) -> str:
    s = max(0, int(s + 0.5))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    def __init__(
        self,
        what: str = "pairs",
        stream: TextIO | None = None,
        quiet: bool = False,
        tty: bool | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.what = what
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.last = float("-inf")
        self.shown = False

    def text(self, done: int, total: int, now: float) -> str:
        elapsed = now - self.start
        pct = 100 * done // total if total else 100
        eta = f", about {_duration(elapsed / done * (total - done))} left" if 0 < done < total else ""
        return f"{done}/{total} {self.what} ({pct}%), {_duration(elapsed)}{eta}"

    def update(self, done: int, total: int) -> None:
        if self.quiet:
            return
        now = self.clock()
        if now - self.start < FIRST or (done < total and now - self.last < (EVERY_BAR if self.tty else EVERY_LINE)):
            return
        self.last = now
        self.shown = True
        if self.tty:
            filled = BAR * done // total if total else BAR
            bar = "#" * filled + "." * (BAR - filled)
            self.stream.write(f"\r\033[K[{bar}] {self.text(done, total, now)}")
        else:
            self.stream.write(f"check: {self.text(done, total, now)}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.tty and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()
