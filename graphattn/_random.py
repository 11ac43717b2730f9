"""Counter-based randomness for the random rules.

Random rules must (1) give the same graph for the same seed on every device and (2) let a shard
build the rows of a query range without drawing the rows before it. A sequential generator
stream gives neither, so every random number here is a pure function of
``(seed key, row, counter)``: an integer hash evaluated with int64 tensor ops, which are exact on
every device. The only use of torch's generators is to turn a ``torch.Generator`` (or ``None``,
torch's default generator) into the 64-bit seed key, one draw per rule call.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["seed_key", "hash_uniform", "uniform_below", "sample_without_replacement"]

_M32 = 0xFFFFFFFF


def seed_key(seed) -> int:
    """Turn ``seed`` (int, ``torch.Generator`` or None) into a 64-bit key.

    An int is used as is (reduced mod 2**64), so the graph depends on the seed value alone. A
    generator (or None: torch's default generator) is advanced by one draw, like any torch random
    call; the caller never touches global RNG state unless it passed ``seed=None``.
    """
    if isinstance(seed, bool):
        raise TypeError(f"expected seed to be an int, a torch.Generator or None, got bool {seed!r}")
    if isinstance(seed, numbers.Integral):
        return int(seed) % (1 << 64)
    if seed is None or isinstance(seed, torch.Generator):
        draw = torch.randint(0, 1 << 62, (2,), generator=seed, device=seed.device if seed is not None else "cpu")
        return (int(draw[0]) ^ (int(draw[1]) << 2)) % (1 << 64)
    raise TypeError(f"expected seed to be an int, a torch.Generator or None, got {type(seed).__name__}")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 for 0 <= x < 2**32, split so no int64 product overflows.
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # "lowbias32" integer finaliser (C. Wellons' hash prospector): a full-avalanche 32-bit mix.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_uniform(key: int, row: torch.Tensor, counter: torch.Tensor | int, stream: int = 0) -> torch.Tensor:
    """32 uniform random bits (int64 in ``[0, 2**32)``) for each ``(row, counter)``.

    ``row`` and ``counter`` broadcast. ``stream`` separates independent uses inside one rule.
    """
    row = torch.as_tensor(row, dtype=torch.int64)
    counter = torch.as_tensor(counter, dtype=torch.int64, device=row.device)
    k0, k1 = key & _M32, (key >> 32) & _M32
    h = _mix32((counter & _M32) ^ _mix32(torch.as_tensor(stream & _M32, device=row.device)))
    # Seed words and row words each get their own mixing round: XOR-ing a seed word with a row
    # word in one round would make (row, seed) and (row ^ d, seed ^ d) collide.
    h = _mix32(h ^ k0)
    h = _mix32(h ^ ((row >> 32) & _M32))
    h = _mix32(h ^ k1)
    return _mix32(h ^ (row & _M32))


def uniform_below(bits: torch.Tensor, bound: torch.Tensor | int) -> torch.Tensor:
    """Map 32 random bits to an int in ``[0, bound)`` by multiply-shift (bias <= bound / 2**32)."""
    return (bits * bound) >> 32


def sample_without_replacement(
    key: int, rows: torch.Tensor, population: torch.Tensor | int, count: int, stream: int = 0
) -> torch.Tensor:
    """For each row draw ``count`` distinct ints uniformly from ``[0, population)``.

    Robert Floyd's algorithm, vectorised across rows: ``count`` steps, each O(rows * count), so
    no row ever materialises its population. Returns int64 ``[len(rows), count]``, unsorted.
    ``population`` (a scalar or one value per row) must be >= ``count``.
    """
    population = torch.as_tensor(population, dtype=torch.int64, device=rows.device)
    population = population.expand(rows.shape[0])
    out = torch.empty(rows.shape[0], count, dtype=torch.int64, device=rows.device)
    for step in range(count):
        top = population - count + step  # draw t in [0, top]
        t = uniform_below(hash_uniform(key, rows, step, stream), top + 1)
        seen = (out[:, :step] == t[:, None]).any(dim=1)
        out[:, step] = torch.where(seen, top, t)
    return out
