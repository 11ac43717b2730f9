"""BP-Transformer (Ye et al., 2019): binary partitioning into span nodes, fine-to-coarse context."""

from __future__ import annotations

import torch

from graphattn._validate import check_bool, check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import check_edges, ranges

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
    num_tok = max(min(stop, n) - min(start, n), 0)
    span_rows = max(stop, n) - max(start, n)
    # Token rows: a key table of 2k + 2 columns per level (keys, validity, relative ids); span
    # rows: their tokens, n per level in all. Then the edges with their relative ids.
    affiliated = min(span_rows * n, n * (len(sizes) - 1))
    check_edges(f"rules.bp_transformer(n={n}, k={k})", num_tok * ((2 * k + 2) * len(sizes) + 1) + affiliated, 60)
    tok = torch.arange(min(start, n), min(stop, n))
    tok_keys, valid, col_rel = _token_key_table(tok, sizes, shift, k, causal)
    keys = [tok_keys[valid]]
    counts = valid.sum(dim=1)
    qs = [tok.repeat_interleave(counts, output_size=keys[0].numel())]
    rels = [col_rel.expand_as(valid)[valid]]
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


def _token_key_table(tok: torch.Tensor, sizes: list[int], shift: list[int], k: int, causal: bool):
    """Contextual keys of the token rows ``tok`` as a table in which every row is sorted:
    ``(keys [T, C], valid [T, C], relative [C])``.

    The frontier walks up the tree: on the left, level ``l`` contributes the ``k`` nodes
    ``p_l, p_l - 1, ..., p_l - k + 1`` (``p_0 = i - 1``, ``p_{l+1} = floor((p_l - k) / 2)``); when
    ``p_l - k`` is even its parent would overlap covered tokens, so slot 0 of level ``l + 1`` is
    that node itself (the uncovered child, id ``shift[l] + p_l - k``) instead of the parent. The
    right side mirrors it (``r_0 = i + 1``, ``r_{l+1} = (r_l + k) // 2``, the child when
    ``r_l + k`` is odd). Node ids grow with the level and, inside a level, with position, so the
    columns below are in increasing key order in every row: level by level, the left child
    taken for the level above, the level's left keys, the token itself (level 0), its right keys,
    the right child taken for the level above. Slot 0 of a level above 0 has a column in each of
    its two places, and the one that does not apply to a row is marked invalid there.
    """
    width = 2 * k + 1
    cols, oks, rels = [], [], []

    def put(key, ok, rel):
        cols.append(key)
        oks.append(ok)
        rels.append(torch.zeros(key.shape[1], dtype=torch.int64) + rel)  # one id per column

    left_slots = torch.arange(k - 1, -1, -1)  # column order: slot k-1 (smallest key) first
    right_slots = torch.arange(k)
    p, over = tok - 1, torch.zeros_like(tok, dtype=torch.bool)
    r, rover = tok + 1, torch.zeros_like(tok, dtype=torch.bool)
    for lvl, size in enumerate(sizes):
        # The next level's frontier, to place its slot-0 children before / after this level.
        p_end, r_end = p - k, r + k
        p_up, r_up = torch.div(p_end, 2, rounding_mode="floor"), torch.div(r_end, 2, rounding_mode="floor")
        up = lvl + 1 < len(sizes)
        if up:  # left child of level lvl + 1's slot 0: node p_end of this level
            put((shift[lvl] + p_end)[:, None], ((p_end % 2 == 0) & (p_up >= 0))[:, None],
                width * (lvl + 1) + 1)
        pos = p[:, None] - left_slots
        ok = pos >= 0
        if lvl:
            ok[:, -1] &= ~over  # slot 0 taken as the child, in the level below
        put(shift[lvl] + pos, ok, width * lvl + 2 * left_slots + 1)
        if lvl == 0:
            put(tok[:, None], torch.ones_like(ok[:, :1]), 0)
        if not causal:
            pos = r[:, None] + right_slots
            ok = pos < size
            if lvl:
                ok[:, 0] &= ~rover
            put(shift[lvl] + pos, ok, width * lvl + 2 * right_slots + 2)
            if up:  # right child of level lvl + 1's slot 0: node r_end of this level
                put((shift[lvl] + r_end)[:, None], ((r_end % 2 == 1) & (r_up < sizes[lvl + 1]) & (r_end < size))[:, None],
                    width * (lvl + 1) + 2)
        p, over = p_up, p_end % 2 == 0
        r, rover = r_up, r_end % 2 == 1
    return torch.cat(cols, dim=1), torch.cat(oks, dim=1), torch.cat(rels)
