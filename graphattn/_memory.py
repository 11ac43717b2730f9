"""Memory checked before it is spent.

The rules, the attention engine and the CLI estimate what a call will allocate (edges, tiling
plan, working set) and call :func:`check_memory` before allocating. When the estimate exceeds
the budget they raise :class:`MemoryBudgetError` (a ``MemoryError``) that names the request,
the estimate and the budget, at once, instead of failing inside an allocation minutes later.

The budget is the memory available to this process on the device (``MemAvailable`` of
``/proc/meminfo`` on Linux CPUs, free memory for CUDA devices) or the user's own limit, whichever
is smaller. Set a limit with :func:`memory_limit` (a context manager) or the environment
variable ``GRAPHATTN_MEMORY_LIMIT`` (bytes, or a number with a ``K``/``M``/``G``/``T`` suffix).
Where neither is known (another OS, no limit set), nothing is refused.

>>> from graphattn import rules
>>> with memory_limit("1M"):
...     rules.full(10_000)
Traceback (most recent call last):
    ...
graphattn._memory.MemoryBudgetError: rules.full(n=10000): 100,000,000 edges need an estimated 3.1 GB, more than the 1.0 MB budget (memory_limit)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re

import torch

__all__ = ["MemoryBudgetError", "memory_limit", "memory_budget", "available_bytes", "check_memory",
           "format_bytes", "edge_bytes"]

_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("graphattn_memory_limit", default=None)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryBudgetError(MemoryError):
    """A request whose estimated memory exceeds the budget (raised before allocating)."""


def _parse_bytes(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected {name} to be a byte count (int or '8G'), got bool {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected {name} > 0 bytes, got {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", value.upper())
        if m:
            out = int(float(m.group(1)) * _UNITS[m.group(2)])
            if out > 0:
                return out
        raise ValueError(f"expected {name} as a positive byte count such as 8G or 512M, got {value!r}")
    raise TypeError(f"expected {name} to be a byte count (int or '8G'), got {type(value).__name__}")


def format_bytes(n: float) -> str:
    """``2.8 GB``-style, powers of 1024."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def memory_limit(limit):
    """Refuse, inside the block, every request estimated above ``limit`` bytes (int or ``'8G'``)."""
    token = _LIMIT.set(_parse_bytes("limit", limit))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def available_bytes(device=None) -> int | None:
    """Memory this process can still take on ``device`` (CPU: ``MemAvailable``), or None."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_budget(device=None) -> tuple[int | None, str]:
    """``(bytes, where it comes from)``: the smaller of the user limit and the available memory."""
    limits = []
    user = _LIMIT.get()
    if user is not None:
        limits.append((user, "memory_limit"))
    env = os.environ.get("GRAPHATTN_MEMORY_LIMIT")
    if env:
        limits.append((_parse_bytes("GRAPHATTN_MEMORY_LIMIT", env), "GRAPHATTN_MEMORY_LIMIT"))
    avail = available_bytes(device)
    if avail is not None:
        limits.append((avail, f"available on {torch.device('cpu' if device is None else device)}"))
    if not limits:
        return None, "unknown"
    return min(limits, key=lambda t: t[0])


def check_memory(what: str, estimate: int, device=None) -> None:
    """Raise :class:`MemoryBudgetError` when ``estimate`` bytes exceed the budget of ``device``.

    ``what`` names the request and its size, e.g. ``"rules.full(n=100000): 10^10 edges"``.
    """
    budget, source = memory_budget(device)
    if budget is not None and estimate > budget:
        raise MemoryBudgetError(f"{what} need an estimated {format_bytes(estimate)}, more than the "
                                f"{format_bytes(budget)} budget ({source})")


def edge_bytes(num_edges: int) -> int:
    """Peak bytes of building a graph of ``num_edges`` edges: the int64 ``[2, E]`` edge list, its
    int8 labels, and one more edge list of working space (sort keys, coalescing, a union's
    operands)."""
    return int(num_edges) * (2 * 8 + 1 + 2 * 8)
