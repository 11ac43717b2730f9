"""ETC (Ainslie et al., 2020): global-local attention with relative positions."""

from __future__ import annotations

from typing import Sequence

import torch

from graphattn._validate import check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import check_edges, global_node_types, ranges, window_rows

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
    # segment graphs this took 18x the time of writing a bare [2, E] list of its size.)
    reach = min(radius, max(n - 1, 0))  # as in band: only offsets that can reach a key
    tokens = window_rows(tok_rows.start, tok_rows.stop, torch.arange(-reach, reach + 1), n,
                         extra=torch.arange(n, total))
    glob = torch.arange(max(start, n), max(stop, n))
    s = glob - n
    glob_query = glob.repeat_interleave(hi[s] - lo[s] + num_global)
    glob_key = ranges(torch.stack([lo[s], torch.full_like(s, n)], dim=1).flatten(),
                      torch.stack([hi[s] - lo[s], torch.full_like(s, num_global)], dim=1).flatten())
    edge_index = torch.cat([tokens, torch.stack([glob_key, glob_query])], dim=1)
    key, query = edge_index
    key_is_token, query_is_token = key < n, query < n
    # token-token and global-global pairs: the clipped offset (globals are numbered among
    # themselves, and both ends shift by n); a token-global pair: the id 2k + 1
    rel = (key - query).clamp_(-k, k).add_(k).masked_fill_(key_is_token != query_is_token, 2 * k + 1)
    label = torch.full((key.numel(),), int(EdgeLabel.GLOBAL), dtype=torch.int8)
    label.masked_fill_(key_is_token & query_is_token, int(EdgeLabel.BAND))
    return AttentionGraph._trusted(edge_index, total, global_node_types(n, num_global), label, rel, None)
