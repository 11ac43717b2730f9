"""Timing helpers for the benchmark suites."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["Measurement", "measure", "format_table", "spawn_worker"]


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


def spawn_worker(module: str, spec: dict, timeout: int, env: dict | None = None) -> dict:
    """Run ``python -m module --worker JSON(spec)`` in a fresh process (so every cell starts with
    a clean allocator and RSS) and return the last JSON line it prints, or ``{"skip": why}``."""
    try:
        proc = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"skip": f"timeout > {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"skip": f"failed: {last[:80]}"}
    return json.loads(lines[-1])
