"""Reformer LSH attention: tokens attend the tokens that hash to the same angular-LSH bucket.

The graph depends on the vectors (shared-QK projections), not only on positions. Hashing runs
on ``x``'s device; the returned graph lives on the CPU (move it with ``g.to(device)``).
"""

from __future__ import annotations

import torch

from graphattn._memory import check_memory
from graphattn._random import seed_key
from graphattn._validate import check_int
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import COALESCE_BYTES, check_edges, coalesce

__all__ = ["lsh", "lsh_buckets"]


def _check_vectors(name: str, x, *, min_rows: int = 0) -> torch.Tensor:
    """``x`` must be a 2-D floating tensor ``[n, d]`` with ``d >= 1`` and finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape [n, d], got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"expected {name} to be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"expected {name} of shape [n, d], got shape {list(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"expected {name} with n >= {min_rows} rows, got shape {list(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"expected {name} with d >= 1 columns, got shape {list(x.shape)}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"expected {name} to hold finite values, got nan or inf")
    return x.detach()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_hash_args(x, num_buckets, num_hashes) -> tuple[torch.Tensor, int, int]:
    x = _check_vectors("x", x)
    num_buckets = check_int("num_buckets", num_buckets, minimum=2)
    if num_buckets % 2:
        raise ValueError(f"expected num_buckets to be even (angular LSH uses [xR ; -xR]), got {num_buckets}")
    num_hashes = check_int("num_hashes", num_hashes, minimum=1)
    # The rotations [num_hashes, d, num_buckets / 2] (float64), the projections and their
    # negation [num_hashes, n, num_buckets] (float64 at most), the bucket counts of every round.
    n, d = x.shape
    check_memory(f"hashing {n:,} vectors into {num_buckets:,} buckets x {num_hashes} rounds",
                 8 * num_hashes * (d * num_buckets // 2 + 2 * n * num_buckets + num_buckets))
    return x, num_buckets, num_hashes


def _buckets(x: torch.Tensor, num_buckets: int, num_hashes: int, seed) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed_key(seed))
    rot = torch.randn(num_hashes, x.shape[1], num_buckets // 2, generator=gen, dtype=torch.float64)
    dtype = _compute_dtype(x)
    proj = torch.einsum("nd,hdb->hnb", x.to(dtype), rot.to(x.device, dtype))  # [H, n, b/2]
    return torch.cat([proj, -proj], dim=-1).argmax(dim=-1).to(torch.int64)  # [H, n]


def lsh_buckets(x: torch.Tensor, *, num_buckets: int, num_hashes: int = 1, seed=None) -> torch.Tensor:
    """Angular-LSH bucket ids of the rows of ``x``: int64 ``[num_hashes, n]`` on ``x``'s device.

    Round ``r`` uses the random rotation ``R_r`` (``d x num_buckets/2``, standard normal) and
    ``h_r(x) = argmax([x R_r ; -x R_r])`` (Reformer, Kitaev et al., 2020; Andoni et al., 2015).
    The rotations are drawn in one call, on the CPU, in float64::

        gen = torch.Generator().manual_seed(seed_key(seed))
        R = torch.randn(num_hashes, d, num_buckets // 2, generator=gen, dtype=torch.float64)

    then cast to the compute dtype (float64 for float64 ``x``, float32 otherwise) on ``x``'s
    device, so the same seed gives the same rotations everywhere. Ties (e.g. a zero row) go to the
    lowest bucket id.

    >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> b = lsh_buckets(x, num_buckets=2, num_hashes=3, seed=0)
    >>> b.shape, bool((b[:, 0] != b[:, 1]).all())  # opposite vectors never share a bucket
    (torch.Size([3, 2]), True)
    """
    x, num_buckets, num_hashes = _check_hash_args(x, num_buckets, num_hashes)
    return _buckets(x, num_buckets, num_hashes, seed)


def _exact_edges(b: torch.Tensor, num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (key, query) pairs sharing a bucket in one round (self pairs included)."""
    n = b.numel()
    order = torch.sort(b, stable=True).indices  # tokens grouped by bucket
    counts = torch.bincount(b, minlength=num_buckets)
    starts = torch.cumsum(counts, 0) - counts
    size = counts[b]  # bucket size of each query
    query = torch.arange(n).repeat_interleave(size)
    first = torch.cumsum(size, 0) - size
    offset = torch.arange(query.numel()) - first.repeat_interleave(size)
    key = order[starts[b][query] + offset]
    return key, query


def _chunked_edges(b: torch.Tensor, num_buckets: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reformer's chunked form in one round: sort by (bucket, position), chunks of ``chunk``,
    each query attends its chunk and the previous one (cyclically). Self pairs included."""
    n = b.numel()
    order = torch.sort(b * n + torch.arange(n)).indices  # by bucket, then position
    num_chunks = -(-n // chunk)
    padded = torch.full((num_chunks * chunk,), -1, dtype=torch.int64)
    padded[:n] = order
    blocks = padded.view(num_chunks, chunk)
    prev = torch.roll(torch.arange(num_chunks), 1)  # chunk k looks back to k-1, chunk 0 to the last
    window = torch.cat([blocks, blocks[prev]], dim=1)  # [num_chunks, 2 * chunk] keys of each chunk
    keys = window.repeat_interleave(chunk, dim=0)[:n]  # row p: keys of the query at sorted pos p
    queries = order[:, None].expand_as(keys)
    valid = keys >= 0
    return keys[valid], queries[valid]


def lsh(x: torch.Tensor, *, num_buckets: int, num_hashes: int = 1, chunk: int | None = None,
        seed=None) -> AttentionGraph:
    """Reformer LSH attention (Kitaev, Kaiser and Levskaya, "Reformer: The Efficient
    Transformer", ICLR 2020) over the ``n`` rows of ``x`` (shared-QK vectors, ``[n, d]``).

    Every round ``r`` hashes each token into one of ``num_buckets`` buckets with angular LSH
    (:func:`lsh_buckets`: random rotation ``R_r``, ``h_r(x) = argmax([x R_r ; -x R_r])``);
    rounds use independent rotations and the graph is the union over the ``num_hashes`` rounds.

    Edge set (query ``i`` attends key ``j != i`` when ...):

    * ``chunk=None`` (exact buckets): ``h_r(x_i) == h_r(x_j)`` for some round ``r``.
    * ``chunk=c`` (Reformer's chunked form): in some round, sort the tokens by
      ``(h_r, position)``, cut the sorted order into chunks of ``c`` (the last may be shorter);
      ``j`` lies in ``i``'s chunk or in the chunk before it, where the first chunk looks back to
      the last one (wrap-around, as Reformer's / Hugging Face's look-one-back).

    A token does not attend itself unless it has no other key; then it keeps exactly its
    self-loop, so every query has at least one key. Every edge is labelled
    :attr:`EdgeLabel.BUCKET`.

    Keys per query (variable): exact mode, the size of the union over rounds of its buckets minus
    itself (at most ``sum_r |bucket_r(i)| - 1``, up to ``n - 1``); chunked mode, at most ``2c - 1``
    per round, so at most ``num_hashes * (2c - 1)`` (and at most ``n - 1``).

    Hashing runs on ``x``'s device in float64 for float64 ``x``, float32 otherwise; the returned
    graph is on the CPU. Randomness: only ``seed`` (int, ``torch.Generator`` or None for torch's
    default generator) through :func:`graphattn._random.seed_key`.

    Builds no ``n x n`` matrix; exact mode makes ``sum_r sum_buckets size^2`` candidate pairs,
    chunked mode ``num_hashes * n * 2c``.

    Vectors pointing the same way share every bucket, opposite ones never do:

    >>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])
    >>> print(lsh(x, num_buckets=2, seed=0).to_string())
    .#..
    #...
    ...#
    ..#.
    >>> g = lsh(torch.randn(10, 4), num_buckets=4, num_hashes=2, chunk=2, seed=1)
    >>> bool((g.keys_per_query() >= 1).all()), bool((g.keys_per_query() <= 2 * (2 * 2 - 1)).all())
    (True, True)
    """
    x, num_buckets, num_hashes = _check_hash_args(x, num_buckets, num_hashes)
    if chunk is not None:
        chunk = check_int("chunk", chunk, minimum=1)
    n = x.shape[0]
    buckets = _buckets(x, num_buckets, num_hashes, seed).cpu()
    if chunk is None:  # every pair sharing a bucket, per round
        pairs = sum(int(torch.bincount(b, minlength=num_buckets).square().sum()) for b in buckets)
    else:
        pairs = num_hashes * (-(-n // chunk)) * chunk * 2 * chunk
    check_edges(f"rules.lsh(n={n}, num_buckets={num_buckets}, num_hashes={num_hashes}, chunk={chunk})",
                pairs + n, COALESCE_BYTES)
    keys, queries = [], []
    for b in buckets:  # rounds
        key, query = _exact_edges(b, num_buckets) if chunk is None else _chunked_edges(b, num_buckets, chunk)
        other = key != query
        keys.append(key[other])
        queries.append(query[other])
    key, query = torch.cat(keys), torch.cat(queries)
    lonely = torch.nonzero(torch.bincount(query, minlength=n) == 0).flatten()
    key, query = torch.cat([key, lonely]), torch.cat([query, lonely])
    return coalesce(key, query, n, label=EdgeLabel.BUCKET)
