"""Atomic position-based rules: full, band (sliding window), dilated band, block-local."""

from __future__ import annotations

import torch

from graphattn._memory import check_memory
from graphattn._validate import check_bool, check_int, check_query_range, renamed_parameters
from graphattn.compose import lift_blocks
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn._structure import Window
from graphattn.rules._build import check_edges, token_types

__all__ = ["full", "band", "dilated", "block_local"]


def full(n: int, *, queries: range | None = None) -> AttentionGraph:
    """Full self-attention (Vaswani et al., 2017): query ``i`` attends every key ``j``.

    Keys per query: ``n``. Edges ``n**2``: a reference and an oracle, not something to run at scale.

    >>> full(2).edge_index.tolist()
    [[0, 1, 0, 1], [0, 0, 1, 1]]
    """
    n = check_int("n", n, minimum=0)
    start, stop = check_query_range(queries, n)
    num_edges = (stop - start) * n
    check_edges(f"rules.full(n={n})", num_edges)
    query = torch.arange(start, stop).repeat_interleave(n)
    key = torch.arange(n).repeat(stop - start)
    return AttentionGraph._trusted(torch.stack([key, query]), n, token_types(n), EdgeLabel.FULL)


def _check_offsets(what: str, count: int) -> None:
    # A window graph holds its offsets (int64) and counts its edges with a few offset-sized
    # temporaries: O(offsets), at most 2n - 1 of them.
    check_memory(f"{what}: {count:,} window offsets", 5 * 8 * count)


def _window(n, offsets, label, queries) -> AttentionGraph:
    """A window graph: its edge list is built when read (:class:`graphattn._structure.Window`)."""
    start, stop = check_query_range(queries, n)
    return AttentionGraph._implicit(n, token_types(n), Window(n, offsets, label, start, stop))


def band(n: int, *, radius: int, causal: bool = False, queries: range | None = None) -> AttentionGraph:
    """Sliding-window (local) attention: query ``i`` attends key ``j`` iff ``|i - j| <= radius``.

    Used by Image Transformer, Longformer, BigBird and ETC. ``radius`` is one-sided.
    Keys per query: ``2*radius + 1`` away from the borders (``radius + 1`` if ``causal``, which
    keeps ``j <= i``). ``queries`` builds only the rows of that query range (sharding).

    >>> band(4, radius=1).keys_per_query().tolist()
    [2, 3, 3, 2]
    >>> band(4, radius=1, causal=True).keys_per_query().tolist()
    [1, 2, 2, 2]
    """
    n = check_int("n", n, minimum=0)
    radius = check_int("radius", radius, minimum=0)
    causal = check_bool("causal", causal)
    # Offsets of n or more reach no key: the same graph from at most 2n - 1 offsets (a radius far
    # beyond n must not cost memory in the radius).
    reach = min(radius, max(n - 1, 0))
    _check_offsets(f"rules.band(n={n}, radius={radius})", reach + 1 if causal else 2 * reach + 1)
    offsets = torch.arange(-reach, 1 if causal else reach + 1)
    return _window(n, offsets, EdgeLabel.BAND, queries)


def dilated(n: int, *, radius: int, dilation: int, causal: bool = False,
            queries: range | None = None) -> AttentionGraph:
    """Dilated sliding window (Longformer, Beltagy et al., 2020): query ``i`` attends key ``j``
    iff ``|i - j| <= radius * dilation`` and ``dilation`` divides ``i - j``.

    Keys per query: ``2*radius + 1`` spread over ``2*radius*dilation + 1`` positions.
    ``dilation=1`` is :func:`band` (and labels its edges BAND).

    >>> dilated(7, radius=1, dilation=2, queries=range(3, 4)).edge_index.tolist()
    [[1, 3, 5], [3, 3, 3]]
    """
    n = check_int("n", n, minimum=0)
    radius = check_int("radius", radius, minimum=0)
    dilation = check_int("dilation", dilation, minimum=1)
    causal = check_bool("causal", causal)
    reach = min(radius, max(n - 1, 0) // dilation)  # as in band: only offsets that can reach a key
    _check_offsets(f"rules.dilated(n={n}, radius={radius}, dilation={dilation})",
                   reach + 1 if causal else 2 * reach + 1)
    offsets = torch.arange(-reach, 1 if causal else reach + 1) * dilation
    return _window(n, offsets, EdgeLabel.BAND if dilation == 1 else EdgeLabel.DILATED, queries)


@renamed_parameters(block="block_size")
def block_local(n: int, *, block_size: int, queries: range | None = None) -> AttentionGraph:
    """Block-local attention (Parmar et al., 2018; Qiu et al., 2019): tokens are cut into
    non-overlapping blocks of ``block_size``; query ``i`` attends key ``j`` iff
    ``i // block_size == j // block_size``.

    Keys per query: ``block_size`` (the last block may be shorter). A block graph (each block attends
    itself) lifted to tokens with :func:`graphattn.compose.lift_blocks`.

    >>> block_local(5, block_size=2).keys_per_query().tolist()
    [2, 2, 2, 2, 1]
    """
    n = check_int("n", n, minimum=0)
    block_size = check_int("block_size", block_size, minimum=1)
    blocks = -(-n // block_size)
    check_edges(f"rules.block_local(n={n}, block_size={block_size}): its block graph", blocks)
    diag = torch.arange(blocks)
    block_graph = AttentionGraph._trusted(torch.stack([diag, diag]), blocks, token_types(blocks), EdgeLabel.BLOCK)
    return lift_blocks(block_graph, block_size=block_size, num_tokens=n, queries=queries)
