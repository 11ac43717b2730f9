"""BP-Transformer (Ye et al., 2019): binary partitioning into span nodes, fine-to-coarse context."""

from __future__ import annotations

import torch

from graphattn._validate import check_bool, check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import ranges

__all__ = ["bp_transformer", "bpt_levels"]


def bpt_levels(n: int) -> list[int]:
    """Node counts per level of the binary partition tree, tokens first, root last:
    ``n, ceil(n/2), ceil(n/4), ..., 1`` (one level when ``n == 1``: the token is the root)."""
    n = check_int("n", n, minimum=1)
    sizes = []
    while n >= 2:
        sizes.append(n)
        n = (n + 1) // 2
    return sizes + [1]


def bp_transformer(n: int, *, k: int, causal: bool = False, queries: range | None = None) -> AttentionGraph:
    """BP-Transformer graph: tokens ``0..n-1`` plus the span nodes of a binary partition tree.

    Nodes: level 0 is the tokens; level ``l+1`` has ``ceil(size_l / 2)`` nodes, down to one root.
    Ids go level by level (finest first), left to right, the root last (``n - 1`` span nodes
    when ``n`` is a power of two, about ``n`` in general). Node ``(l, v)`` covers the tokens
    ``[v * 2**l, min((v+1) * 2**l, n))``: an aligned power-of-two range, truncated at the end.

    Edges, as built by the reference implementation (yzh119/BPT, ``graph_builder/builder.pyx``,
    ``BinaryPartition.build_graph``):

    * affiliated (label AFFILIATED): each span node attends exactly the tokens it covers;
    * self-loops on tokens (label SELF); span nodes have none;
    * contextual (label CONTEXTUAL): token ``i`` attends, at every level, the ``k`` nearest
      nodes on its left and ``k`` on its right beyond what finer levels already cover (a frontier
      walks up the tree; where a parent would overlap covered tokens, its uncovered child is
      taken instead). ``{i}`` and the spans of its contextual keys tile ``[0, n)`` exactly once.
      ``causal=True`` drops the right side (the reference's ``triu``).

    Keys per token about ``2k * log2(n / k)``. ``g.relative`` carries the reference's edge-type
    ids ``(2k + 1) * level + slot`` (slot 0 for self/affiliated, ``2s + 1`` for the ``s``-th left
    and ``2s + 2`` for the ``s``-th right key of a level), ``(2k + 1) * len(bpt_levels(n))``
    distinct ids in all, for a learned per-level relative bias.

    Deviation: for lengths whose tree has an odd-sized level, the reference emits one wrong
    right-hand key (an off-by-one in its overlap case that lands on node 0 of the level above,
    which can contain the query itself, and duplicates an edge). This rule emits the intended
    key set, for which the tiling property holds.

    >>> g = bp_transformer(8, k=1)
    >>> g.num_nodes, g.keys_per_query()[:8].tolist()
    (15, [4, 5, 6, 6, 6, 6, 5, 4])
    >>> g.edge_index[0, g.edge_index[1] == 0].tolist()  # token 0: itself, 1, span [2,4), span [4,8)
    [0, 1, 9, 13]
    """
    n = check_int("n", n, minimum=1)
    k = check_int("k", k, minimum=1)
    causal = check_bool("causal", causal)
    sizes = bpt_levels(n)
    shift = [0]
    for s in sizes:
        shift.append(shift[-1] + s)
    num_nodes = shift[-1]
    start, stop = check_query_range(queries, num_nodes)
    width = 2 * k + 1
    # Token rows: one column per (level, side, slot), padded with the sentinel num_nodes where a
    # slot is empty; a per-row sort (rows are short: 1 + 2k per level) then yields the edges
    # already in (query, key) order, with no global sort of the whole edge list.
    tok = torch.arange(min(start, n), min(stop, n))
    cols, col_rel = [tok], [torch.zeros_like(tok)]

    def column(key, ok, rel):
        cols.append(torch.where(ok, key, num_nodes))
        col_rel.append(torch.full_like(tok, rel))

    # Left frontier: p is the next uncovered node of the current level; `over` says its parent
    # step overlapped covered tokens, so the left child one level down is taken instead.
    p, over = tok - 1, torch.zeros_like(tok, dtype=torch.bool)
    r, rover = tok + 1, torch.zeros_like(tok, dtype=torch.bool)
    for lvl, size in enumerate(sizes):
        for slot in range(k):
            ok = p >= 0
            column(torch.where(over, shift[lvl - 1] + 2 * p, shift[lvl] + p), ok, width * lvl + 2 * slot + 1)
            over = over & ~ok
            p = p - 1
            if not causal:
                ok = r < size
                child_ok = ~rover | (2 * r + 1 < (sizes[lvl - 1] if lvl else 0))
                column(torch.where(rover, shift[lvl - 1] + 2 * r + 1, shift[lvl] + r), ok & child_ok,
                       width * lvl + 2 * slot + 2)
                rover = rover & ~ok
                r = r + 1
        over = over | (p % 2 == 0)
        p = torch.div(p, 2, rounding_mode="floor")
        rover = rover | (r % 2 == 1)
        r = torch.div(r, 2, rounding_mode="floor")
    tok_keys, order = torch.sort(torch.stack(cols, dim=1), dim=1)
    tok_rel = torch.gather(torch.stack(col_rel, dim=1), 1, order)
    valid = tok_keys < num_nodes
    keys = [tok_keys[valid]]
    qs = [tok[:, None].expand_as(tok_keys)[valid]]
    rels = [tok_rel[valid]]
    labels = [torch.where(keys[0] == qs[0], int(EdgeLabel.SELF), int(EdgeLabel.CONTEXTUAL)).to(torch.int8)]
    # Affiliated: span node (l, v) attends its tokens.
    for lvl in range(1, len(sizes)):
        lo, hi = max(start, shift[lvl]), min(stop, shift[lvl + 1])
        if hi <= lo:
            continue
        v = torch.arange(lo - shift[lvl], hi - shift[lvl])
        first = v << lvl
        count = torch.clamp_max((v + 1) << lvl, n) - first
        keys.append(ranges(first, count))
        qs.append(torch.arange(lo, hi).repeat_interleave(count))
        labels.append(torch.full((keys[-1].numel(),), int(EdgeLabel.AFFILIATED), dtype=torch.int8))
        rels.append(torch.full((keys[-1].numel(),), width * lvl, dtype=torch.int64))
    node_type = torch.full((num_nodes,), int(NodeType.SPAN), dtype=torch.int8)
    node_type[:n] = int(NodeType.TOKEN)
    # Token rows (ids < n) come first, then span rows level by level: already sorted.
    return AttentionGraph._trusted(torch.stack([torch.cat(keys), torch.cat(qs)]), num_nodes,
                                   node_type, torch.cat(labels), torch.cat(rels))
