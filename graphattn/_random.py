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

__all__ = ["seed_key", "hash_uniform", "uniform_below", "sample_without_replacement",
           "sorted_sample_without_replacement"]

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


def _signed32(c: int) -> int:
    # c or c - 2**32: the same residue mod 2**32, and |c| <= 2**31, so x * c never overflows int64
    # for 0 <= x < 2**32 and its low 32 bits (two's complement) are (x * c) mod 2**32.
    return c - (1 << 32) if c >= 1 << 31 else c


_C1, _C2 = _signed32(0x7FEB352D), _signed32(0x846CA68B)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """"lowbias32" integer finaliser (C. Wellons' hash prospector), a full-avalanche 32-bit mix,
    applied in place to ``x`` (int64 in ``[0, 2**32)``, a tensor the caller owns)."""
    x.bitwise_xor_(x >> 16)
    x.mul_(_C1).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 15)
    x.mul_(_C2).bitwise_and_(_M32)
    return x.bitwise_xor_(x >> 16)


def _fits_32_bits(row: torch.Tensor) -> bool:
    # Checked on the CPU only, where the reduction is cheap and does not synchronise a device.
    if row.device.type != "cpu":
        return False
    return row.numel() == 0 or (int(row.min()) >= 0 and int(row.max()) <= _M32)


def hash_uniform(key: int, row: torch.Tensor, counter: torch.Tensor | int, stream: int = 0) -> torch.Tensor:
    """32 uniform random bits (int64 in ``[0, 2**32)``) for each ``(row, counter)``.

    ``row`` and ``counter`` broadcast. ``stream`` separates independent uses inside one rule.
    """
    row = torch.as_tensor(row, dtype=torch.int64)
    counter = torch.as_tensor(counter, dtype=torch.int64, device=row.device)
    k0, k1 = key & _M32, (key >> 32) & _M32
    s = _mix32_(torch.tensor(stream & _M32, dtype=torch.int64, device=row.device))
    # Seed words and row words each get their own mixing round: XOR-ing a seed word with a row
    # word in one round would make (row, seed) and (row ^ d, seed ^ d) collide. The rounds before
    # the row's low word depend on (counter, seed, row's high word) only: when every row fits in
    # 32 bits they are computed once per counter, not once per element.
    h = _mix32_((counter & _M32) ^ s)
    h = _mix32_(h ^ k0)
    if _fits_32_bits(row):
        h = _mix32_(_mix32_(h) ^ k1)
    else:
        h = _mix32_(_mix32_(h ^ ((row >> 32) & _M32)) ^ k1)
    return _mix32_(h ^ (row & _M32))


def uniform_below(bits: torch.Tensor, bound: torch.Tensor | int) -> torch.Tensor:
    """Map 32 random bits to an int in ``[0, bound)`` by multiply-shift (bias <= bound / 2**32)."""
    return (bits * bound) >> 32


def sample_without_replacement(
    key: int, rows: torch.Tensor, population: torch.Tensor | int, count: int, stream: int = 0
) -> torch.Tensor:
    """For each row draw ``count`` distinct ints uniformly from ``[0, population)``.

    Robert Floyd's algorithm, vectorised across rows: step ``s`` draws ``t`` uniform in
    ``[0, top_s]`` (``top_s = population - count + s``) and takes ``t``, or ``top_s`` when ``t``
    was taken before. No row ever materialises its population. Returns int64
    ``[len(rows), count]``, unsorted. ``population`` (a scalar or one value per row) must be
    ``>= count``.
    """
    draws, top = _floyd_draws(key, rows, population, count, stream)
    return _floyd_resolve(draws, top)


def _floyd_draws(key, rows, population, count, stream):
    """Every step's draw at once (a draw depends on ``(seed, row, step)`` only, not on earlier
    picks): ``(t [rows, count], top [rows, count])``."""
    population = torch.as_tensor(population, dtype=torch.int64, device=rows.device)
    steps = torch.arange(count, device=rows.device)
    # [1, count] for one population, [rows, count] for one per row
    top = (population[:, None] if population.dim() else population) - count + steps
    top = top.expand(1, count) if top.dim() == 1 else top
    bits = hash_uniform(key, rows[:, None], steps, stream)
    return uniform_below(bits, top + 1), top


def _floyd_resolve(draws: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(draws)
    for step in range(draws.shape[1]):
        t = draws[:, step]
        seen = (out[:, :step] == t[:, None]).any(dim=1)
        out[:, step] = torch.where(seen, top[:, step], t)
    return out


def sorted_sample_without_replacement(
    key: int, rows: torch.Tensor, population: int, count: int, stream: int = 0
) -> torch.Tensor:
    """The rows of :func:`sample_without_replacement` (same seed, same sets) sorted increasingly.

    Floyd's picks are the draws themselves unless a draw repeats an earlier one or reaches the
    range of the tops (``>= population - count``). A row with neither is its sorted draws, so most
    rows cost one small sort; only the others run Floyd's sequential steps.
    """
    draws, top = _floyd_draws(key, rows, population, count, stream)
    values = torch.sort(draws, dim=1).values
    plain = (values[:, -1:] < population - count).all(dim=1) if count else torch.ones_like(rows, dtype=torch.bool)
    if count > 1:
        plain &= (values[:, 1:] != values[:, :-1]).all(dim=1)
    other = (~plain).nonzero().flatten()
    if other.numel():
        top = top.expand(draws.shape[0], -1)
        values[other] = torch.sort(_floyd_resolve(draws[other], top[other]), dim=1).values
    return values
