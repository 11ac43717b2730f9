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

__all__ = ["Measurement", "measure", "matmul_rate", "format_table", "spawn_worker", "describe_cell"]


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


def matmul_rate(n: int = 2048, repeats: int = 10, device="cpu", dtype=None) -> float:
    """The GEMM rate of this process (FLOP/s): the median of ``repeats`` ``n x n`` products in
    ``dtype`` (default fp32) on ``device``. Benchmarks state their FLOP floors against this rate,
    measured in the same run, rather than against a vendor's peak."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator(device=device)
    a, b = (torch.randn(n, n, generator=gen.manual_seed(i), device=device).to(dtype) for i in range(2))
    if torch.device(device).type == "cuda":
        def product():
            a @ b
            torch.cuda.synchronize(device)
    else:
        def product():
            return a @ b
    return 2.0 * n**3 / measure(product, repeats=repeats, warmup=2).median_s


def format_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (pasteable into notes)."""
    text = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, text)])


_CELL_FIELDS = (  # (key, text): how a worker's result reads in a progress line
    ("time_s", "{:.3f} s"), ("setup_s", "one-time {:.2f} s"), ("blockmask_s", "block mask {:.2f} s"),
    ("peak_rss_gib", "peak RSS {:.2f} GiB"), ("base_rss_gib", "start RSS {:.2f} GiB"),
    ("mmap_gib", "mmap 64K peak - start {:.2f} GiB"),
)


def describe_cell(result: dict) -> str:
    """A benchmark cell's result as a progress line: ``0.123 s, peak RSS 1.20 GiB`` or
    ``skipped: why``."""
    if "skip" in result:
        return f"skipped: {result['skip']}"
    parts = [text.format(result[key]) for key, text in _CELL_FIELDS if result.get(key) is not None]
    known = {key for key, _ in _CELL_FIELDS}
    parts += [f"{key} {value}" for key, value in result.items() if key not in known]
    return ", ".join(parts)


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
