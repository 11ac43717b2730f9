"""Tests for graphattn.rules.etc: ETC global-local attention with relative positions."""

from __future__ import annotations

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import etc


def oracle_etc(n: int, num_global: int, radius: int, segments=None, max_relative=None):
    """(key, query) -> (label, relative id), from the four documented pieces with plain loops."""
    k = radius if max_relative is None else max_relative
    if segments is None:
        seg = [(0, n)] * num_global
    else:
        seg, lo = [], 0
        for length in segments:
            seg.append((lo, lo + length))
            lo += length
    clip = lambda x: max(-k, min(k, x)) + k  # noqa: E731
    out = {}
    total = n + num_global
    for i in range(total):
        for j in range(total):
            qt, kt = i < n, j < n
            if qt and kt:                      # long-to-long band
                if abs(i - j) <= radius:
                    out[(j, i)] = (int(EdgeLabel.BAND), clip(j - i))
            elif qt and not kt:                # long-to-global
                out[(j, i)] = (int(EdgeLabel.GLOBAL), 2 * k + 1)
            elif not qt and not kt:            # global-to-global, numbered among globals
                out[(j, i)] = (int(EdgeLabel.GLOBAL), clip((j - n) - (i - n)))
            else:                              # global-to-long: its segment
                lo, hi = seg[i - n]
                if lo <= j < hi:
                    out[(j, i)] = (int(EdgeLabel.GLOBAL), 2 * k + 1)
    return out


def graph_dict(g: AttentionGraph):
    key, query = g.edge_index.tolist()
    return dict(zip(zip(key, query), zip(g.edge_label.tolist(), g.relative.tolist())))


def check_structure(g: AttentionGraph, n: int, num_global: int) -> None:
    assert g.num_nodes == n + num_global and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n + [int(NodeType.GLOBAL)] * num_global
    code = g.edge_index[1] * max(g.num_nodes, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is not None and g.relative.dtype == torch.int64
    assert g.relative.shape == (g.num_edges,)
    assert g.head_mask is None


CASES = [
    # n, num_global, radius, segments, max_relative
    (0, 0, 0, None, None), (0, 2, 1, None, None), (0, 2, 1, [0, 0], None), (1, 0, 0, None, None),
    (1, 1, 0, None, None), (4, 1, 1, None, None), (5, 0, 2, None, None), (7, 3, 1, None, None),
    (7, 3, 1, [2, 0, 5], None), (10, 2, 2, [5, 5], None), (10, 2, 2, [5, 5], 1),
    (10, 2, 2, None, 5), (9, 4, 3, [1, 2, 3, 3], 0), (12, 1, 20, [12], None), (6, 6, 1, [1] * 6, 2),
    (11, 5, 0, None, 3),
]


@pytest.mark.parametrize("n,num_global,radius,segments,max_relative", CASES)
def test_etc_matches_oracle(n, num_global, radius, segments, max_relative):
    g = etc(n, num_global=num_global, radius=radius, segments=segments, max_relative=max_relative)
    check_structure(g, n, num_global)
    assert graph_dict(g) == oracle_etc(n, num_global, radius, segments, max_relative)
    k = radius if max_relative is None else max_relative
    if g.num_edges:
        assert 0 <= int(g.relative.min()) and int(g.relative.max()) <= 2 * k + 1  # 2k+2 ids


def test_etc_relative_ids_exact_small_case():
    # docstring example: token 1 attends keys 0, 1, 2 (ids 0, 1, 2) and the global node 4 (id 3)
    g = etc(4, num_global=1, radius=1)
    assert g.num_nodes == 5
    assert g.keys_per_query().tolist() == [3, 4, 4, 3, 5]
    assert g.relative[g.edge_index[1] == 1].tolist() == [0, 1, 2, 3]


def test_etc_relative_clipping_among_globals_and_tokens():
    n, ng, radius, k = 6, 5, 3, 1
    g = etc(n, num_global=ng, radius=radius, max_relative=k)
    d = graph_dict(g)
    # tokens 0 and 3 (distance 3 > k): clipped to the ends 0 and 2k
    assert d[(3, 0)][1] == 2 * k and d[(0, 3)][1] == 0
    # globals n and n+4 (distance 4 among globals): clipped too
    assert d[(n + 4, n)][1] == 2 * k and d[(n, n + 4)][1] == 0
    assert d[(n + 1, n + 2)][1] == 0 and d[(n + 2, n + 2)][1] == k and d[(n + 3, n + 2)][1] == 2 * k
    # every token<->global edge carries the distinct id 2k+1, and only those do
    key, query = g.edge_index
    mixed = (key < n) != (query < n)
    assert bool((g.relative[mixed] == 2 * k + 1).all())
    assert bool((g.relative[~mixed] <= 2 * k).all())


def test_etc_keys_per_query():
    n, ng, radius = 30, 3, 2
    segs = [10, 15, 5]
    g = etc(n, num_global=ng, radius=radius, segments=segs)
    kpq = g.keys_per_query().tolist()
    for i in range(radius, n - radius):
        assert kpq[i] == 2 * radius + 1 + ng
    assert kpq[n:] == [ng + s for s in segs]
    g_all = etc(n, num_global=ng, radius=radius)
    assert g_all.keys_per_query().tolist()[n:] == [ng + n] * ng


def test_etc_segments_each_global_attends_its_segment():
    n, segs = 12, [3, 0, 4, 5]
    g = etc(n, num_global=len(segs), radius=1, segments=segs)
    dense = g.to_dense()
    lo = 0
    for s, length in enumerate(segs):
        row = dense[n + s, :n]
        assert row.nonzero().flatten().tolist() == list(range(lo, lo + length))
        lo += length
    assert bool(dense[:n, n:].all())   # long-to-global full
    assert bool(dense[n:, n:].all())   # global-to-global full


def test_etc_no_globals_is_band():
    from graphattn.rules import band

    g = etc(9, num_global=0, radius=2)
    assert torch.equal(g.edge_index, band(9, radius=2).edge_index)
    assert g.relative.tolist() == [j - i + 2 for j, i in zip(*g.edge_index.tolist())]
