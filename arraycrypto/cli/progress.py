"""A progress bar on stderr, only for a person watching: a terminal, and a known size."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from typing import BinaryIO, TextIO

__all__ = ["ProgressBar", "known_size", "progress_bar"]

_WIDTH = 30


def known_size(stream: BinaryIO) -> int | None:
    """Return the bytes left to read in ``stream`` if it is a regular file, else None."""
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(info.st_size - stream.tell(), 0)
    except (OSError, ValueError, AttributeError):
        return None


class ProgressBar:
    """Draws ``label 42% [#####     ] 1.2/2.9 MiB 310 MiB/s`` on one line, 10 times a second."""

    def __init__(
        self,
        label: str,
        total: int,
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = max(total, 1)
        self.out = out
        self.clock = clock
        self.start = clock()
        self.last = -1.0
        self.drawn = False

    def __call__(self, done: int) -> None:
        now = self.clock()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        filled = int(frac * _WIDTH)
        rate = done / max(now - self.start, 1e-6) / (1 << 20)
        self.out.write(
            f"\r{self.label} {frac * 100:3.0f}% [{'#' * filled}{' ' * (_WIDTH - filled)}]"
            f" {done / (1 << 20):.1f}/{self.total / (1 << 20):.1f} MiB {rate:.0f} MiB/s"
        )
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def progress_bar(label: str, total: int | None, out: TextIO | None = None) -> ProgressBar | None:
    """Return a bar if ``out`` (stderr) is a terminal and ``total`` is known, else None."""
    out = sys.stderr if out is None else out
    if total is None or not out.isatty():
        return None
    return ProgressBar(label, total, out)
