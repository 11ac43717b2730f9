"""ETC (Ainslie et al., 2020): global-local attention with relative positions."""

from __future__ import annotations

from typing import Sequence

import torch

from graphattn._validate import check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import check_edges, coalesce, ranges
from graphattn.rules.globals import global_nodes
from graphattn.rules.position import band

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
    # band, global pieces, their union and the relative ids (one more int64 per edge, and temporaries)
    check_edges(f"rules.etc(n={n}, num_global={num_global}, radius={radius})",
                len(tok_rows) * (min(2 * radius + 1, n) + num_global) + num_global * num_glob + n * num_glob, 90)
    local = band(n, radius=radius, queries=tok_rows).add_nodes(num_global, node_type=NodeType.GLOBAL)
    # long-to-global and global-to-global: each row of the ETC global-node pattern without the
    # global rows' token keys, which global-to-long adds per segment.
    g = global_nodes(n, num_global=num_global, queries=queries)
    gkey, gquery = g.edge_index
    keep = (gquery < n) | (gkey >= n)
    glob = g._select(keep)
    rows = torch.arange(max(start, n), max(stop, n))
    if segments is None:
        lo, hi = torch.zeros(num_global, dtype=torch.int64), torch.full((num_global,), n)
    else:
        b = _segment_bounds(segments, n, num_global)
        lo, hi = b[:-1], b[1:]
    s = rows - n
    counts = hi[s] - lo[s]
    g2l_q = rows.repeat_interleave(counts)
    g2l_k = ranges(lo[s], counts)
    g2l = coalesce(g2l_k, g2l_q, total, node_type=g.node_type, label=EdgeLabel.GLOBAL)
    out = local | glob | g2l
    key, query = out.edge_index
    key_tok, query_tok = key < n, query < n
    pos_k = torch.where(key_tok, key, key - n)
    pos_q = torch.where(query_tok, query, query - n)
    rel = (pos_k - pos_q).clamp(-k, k) + k
    rel = torch.where(key_tok == query_tok, rel, torch.full_like(rel, 2 * k + 1))
    return AttentionGraph._trusted(out.edge_index, total, out.node_type, out.edge_label, rel, None)
