"""Timing helpers for the benchmark suites."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["Measurement", "measure", "format_table"]


@dataclass(frozen=True)
class Measurement:
    median_s: float
    min_s: float
    repeats: int
    result: object = None


def measure(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> Measurement:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    result = None
    for _ in range(warmup):
        result = fn()
        del result
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if _ != repeats - 1:
            del result
    return Measurement(statistics.median(times), min(times), repeats, result)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (pasteable into notes)."""
    text = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, text)])
