"""Progress reporting shared by the CLI and the library functions it runs (internal)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A minimal progress bar on stderr (only when stderr is a terminal or forced)."""

    def __init__(self, total: int, label: str, *, enabled: bool | None = None):
        self.total, self.label, self.done, self.t0 = total, label, 0, time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def step(self, what: str = "") -> None:
        self.done += 1
        if self.enabled:
            width = 24
            fill = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                             f"{time.perf_counter() - self.t0:5.1f}s {what[:30]:30s}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
