"""ETC (Ainslie et al., 2020): global-local attention with relative positions."""

from __future__ import annotations

from typing import Sequence

import torch

from graphattn._validate import check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import check_edges, ranges, token_types

__all__ = ["etc"]


def _segment_bounds(segments, n: int, num_global: int) -> torch.Tensor:
    if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence):
        raise TypeError(f"expected segments to be a sequence of {num_global} ints or None, "
                        f"got {type(segments).__name__}")
    lengths = [check_int(f"segments[{p}]", s, minimum=0) for p, s in enumerate(segments)]
    if len(lengths) != num_global:
        raise ValueError(f"expected segments to hold num_global = {num_global} lengths, got {len(lengths)}")
    if sum(lengths) != n:
        raise ValueError(f"expected segments to sum to n = {n}, got {sum(lengths)}")
    return torch.tensor([0] + lengths).cumsum(0)


def etc(n: int, *, num_global: int, radius: int, segments: Sequence[int] | None = None,
        max_relative: int | None = None, queries: range | None = None) -> AttentionGraph:
    """ETC global-local attention over ``n`` long tokens and ``num_global`` appended global nodes
    (``n .. n+num_global-1``, type GLOBAL). Four pieces:

    * global-to-global: every global node attends every global node;
    * global-to-long: global node ``s`` attends the long tokens of segment ``s``
      (``segments`` = ``num_global`` lengths summing to ``n``), or every token when
      ``segments`` is None;
    * long-to-global: every token attends every global node;
    * long-to-long: band of ``radius`` (label BAND; the global pieces are labelled GLOBAL).

    Relative positions (``g.relative``, ids for a learned per-head bias, ``num_relative =
    2*k + 2`` with ``k = max_relative``, default ``radius``): for a token pair and for a global
    pair, ``clip(j - i, -k, k) + k`` (global nodes are numbered among themselves); for an edge
    between a global node and a token, the distinct id ``2*k + 1``.
    Keys per query: ``2*radius + 1 + num_global`` for a token away from the borders;
    ``num_global`` plus its segment's length for a global node.

    >>> g = etc(4, num_global=1, radius=1)
    >>> g.num_nodes, g.keys_per_query().tolist()
    (5, [3, 4, 4, 3, 5])
    >>> g.relative[g.edge_index[1] == 1].tolist()  # keys 0, 1, 2 and the global node 4
    [0, 1, 2, 3]
    """
    n = check_int("n", n, minimum=0)
    num_global = check_int("num_global", num_global, minimum=0)
    radius = check_int("radius", radius, minimum=0)
    k = radius if max_relative is None else check_int("max_relative", max_relative, minimum=0)
    total = n + num_global
    start, stop = check_query_range(queries, total)
    tok_rows = range(min(start, n), min(stop, n))
    num_glob = max(stop, n) - max(start, n)
    # the pieces, their concatenation, the relative ids and labels (an upper bound on the temporaries)
    check_edges(f"rules.etc(n={n}, num_global={num_global}, radius={radius})",
                len(tok_rows) * (min(2 * radius + 1, n) + num_global) + num_global * num_glob + n * num_glob, 90)
    if segments is None:
        lo, hi = torch.zeros(num_global, dtype=torch.int64), torch.full((num_global,), n)
    else:
        b = _segment_bounds(segments, n, num_global)
        lo, hi = b[:-1], b[1:]
    # Written in (query, key) order directly, no union and no sort: a token row is its band (keys
    # < n) then every global node (keys >= n); a global row is its segment's tokens then every
    # global node. The pieces never share an edge. (Built as the union of band, global-node and
    # segment graphs this took 22x the time of writing a bare [2, E] list of its size.)
    q = torch.arange(tok_rows.start, tok_rows.stop)
    left = q[q < radius]  # rows whose band is cut by the borders, and rows whose band is whole
    right = q[(q >= radius) & (q >= n - radius)]
    middle = q[left.numel():q.numel() - right.numel()]
    glob = torch.arange(max(start, n), max(stop, n))
    counts = hi[glob - n] - lo[glob - n]
    parts = [_token_rows(rows, n, num_global, radius, k) for rows in (left, middle, right)]
    parts.append(_global_rows(glob, lo[glob - n], counts, n, num_global, k))
    num_edges = sum(p[0].numel() for p in parts)
    edge_index = torch.empty(2, num_edges, dtype=torch.int64)
    torch.cat([p[0] for p in parts], out=edge_index[0])
    torch.cat([p[1] for p in parts], out=edge_index[1])
    rel = torch.cat([p[2] for p in parts])
    label = torch.cat([p[3] for p in parts])
    node_type = torch.cat([token_types(n), torch.full((num_global,), int(NodeType.GLOBAL), dtype=torch.int8)])
    return AttentionGraph._trusted(edge_index, total, node_type, label, rel, None)


def _token_rows(q: torch.Tensor, n: int, num_global: int, radius: int, k: int):
    """``(key, query, relative id, label)`` of the consecutive token rows ``q``: each row's band
    keys, then the global nodes ``n .. n + num_global - 1``. Every row is the same pattern of
    width ``2 * radius + 1 + num_global`` shifted by its query, so all come from [rows, width]
    matrices; band cells outside ``[0, n)`` are dropped (only border rows have any)."""
    offset = torch.arange(-radius, radius + 1)
    key = torch.cat([q[:, None] + offset, torch.arange(n, n + num_global).expand(q.numel(), -1)], dim=1)
    rel = torch.cat([offset.clamp(-k, k) + k, torch.full((num_global,), 2 * k + 1)])
    label = torch.cat([torch.full((offset.numel(),), int(EdgeLabel.BAND), dtype=torch.int8),
                       torch.full((num_global,), int(EdgeLabel.GLOBAL), dtype=torch.int8)])
    query = q[:, None].expand_as(key)
    if q.numel() and (int(q[0]) < radius or int(q[-1]) + radius >= n):
        keep = torch.ones_like(key, dtype=torch.bool)
        keep[:, :offset.numel()] = (key[:, :offset.numel()] >= 0) & (key[:, :offset.numel()] < n)
        return key[keep], query[keep], rel.expand_as(key)[keep], label.expand_as(key)[keep]
    return key.flatten(), query.flatten(), rel.repeat(q.numel()), label.repeat(q.numel())


def _global_rows(glob: torch.Tensor, first: torch.Tensor, counts: torch.Tensor, n: int, num_global: int, k: int):
    """``(key, query, relative id, label)`` of the global rows ``glob``: row ``g`` attends its
    segment's ``counts[g]`` tokens from ``first[g]`` (relative id ``2k + 1``), then every global
    node (relative id of the clipped offset between global nodes)."""
    query = glob.repeat_interleave(counts + num_global)
    starts = torch.stack([first, torch.full_like(glob, n)], dim=1).flatten()
    key = ranges(starts, torch.stack([counts, torch.full_like(glob, num_global)], dim=1).flatten())
    token = key < n
    rel = torch.where(token, torch.full_like(key, 2 * k + 1), (key - query).clamp(-k, k) + k)
    return key, query, rel, torch.full_like(key, int(EdgeLabel.GLOBAL), dtype=torch.int8)
