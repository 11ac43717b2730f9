"""Tests for graphattn.rules.longformer: (dilated) band plus global tokens, per-head dilation."""

from __future__ import annotations

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import dilated, global_tokens, longformer


def labelled_edges(g: AttentionGraph) -> dict[tuple[int, int], int]:
    key, query = g.edge_index.tolist()
    return dict(zip(zip(key, query), g.edge_label.tolist()))


def in_window(i: int, j: int, radius: int, d: int) -> bool:
    return abs(i - j) <= radius * d and (i - j) % d == 0


def oracle_longformer(n: int, radius: int, d: int, glob) -> dict[tuple[int, int], int]:
    """(key, query) -> label: the window label where the window holds the edge, else GLOBAL."""
    G = set(glob)
    win_label = int(EdgeLabel.BAND if d == 1 else EdgeLabel.DILATED)
    out = {}
    for i in range(n):
        for j in range(n):
            if in_window(i, j, radius, d):
                out[(j, i)] = win_label
            elif i in G or j in G:
                out[(j, i)] = int(EdgeLabel.GLOBAL)
    return out


def check_invariants(g: AttentionGraph, n: int) -> None:
    assert g.num_nodes == n and g.node_type.tolist() == [int(NodeType.TOKEN)] * n
    code = g.edge_index[1] * max(n, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is None


CASES = [
    (0, 1, 1, []), (1, 0, 1, []), (1, 2, 3, [0]), (2, 1, 1, [1]), (5, 1, 1, []), (5, 1, 2, [0]),
    (8, 1, 1, [0]), (9, 2, 2, [0, 8]), (13, 1, 3, [6]), (13, 3, 2, [2, 11, 0]), (16, 0, 1, [3]),
    (20, 2, 5, [19]), (7, 10, 1, [2]),
]


@pytest.mark.parametrize("n,radius,d,glob", CASES)
def test_longformer_matches_oracle(n, radius, d, glob):
    g = longformer(n, radius=radius, dilation=d, global_indices=glob)
    check_invariants(g, n)
    assert g.head_mask is None and g.num_heads is None
    assert labelled_edges(g) == oracle_longformer(n, radius, d, glob)
    # it is the union of its two parts
    parts = dilated(n, radius=radius, dilation=d) | global_tokens(n, global_indices=glob)
    assert g.equals(parts)


@pytest.mark.parametrize("n,radius,d,glob", CASES)
def test_longformer_counts_and_slices_come_from_its_structure(n, radius, d, glob):
    # The band stays implicit: keys per query, edge counts and query slices read no edges, and
    # equal those of the graph's own edge list (and of a slice's).
    g = longformer(n, radius=radius, dilation=d, global_indices=glob)
    parts = dilated(n, radius=radius, dilation=d) | global_tokens(n, global_indices=glob)
    lo, hi = n // 3, n - n // 4
    s = g.query_slice(lo, hi)
    assert g.structure is not None and s.structure is not None
    assert torch.equal(g.keys_per_query(), parts.keys_per_query()) and g.num_edges == parts.num_edges
    assert torch.equal(s.keys_per_query(), parts.query_slice(lo, hi).keys_per_query())
    assert g.structure is not None and s.structure is not None
    assert s.equals(parts.query_slice(lo, hi))
    ranged = longformer(n, radius=radius, dilation=d, global_indices=glob, queries=range(lo, hi))
    assert ranged.num_edges == s.num_edges and ranged.equals(s)


def test_longformer_keys_per_query_formula():
    n, radius, glob = 40, 2, [0, 20]
    g = longformer(n, radius=radius, dilation=3, global_indices=glob)
    kpq = g.keys_per_query().tolist()
    for i in glob:
        assert kpq[i] == n
    # away from the borders and from the globals' neighbourhoods: 2r+1 window keys + g globals
    for i in (9, 30):
        assert kpq[i] == 2 * radius + 1 + len(glob)


def test_longformer_docstring_example():
    g = longformer(8, radius=1, global_indices=[0])
    assert g.keys_per_query().tolist() == [8, 3, 4, 4, 4, 4, 4, 3]
    assert longformer(8, radius=1, dilation=[1, 2]).num_heads == 2


@pytest.mark.parametrize("n,radius,dilations,glob", [
    (0, 1, [1, 2], []), (1, 1, [1, 2], [0]), (9, 1, [1, 2], [0]), (17, 2, [1, 1, 2, 3], [4, 16]),
    (12, 1, [2], []), (11, 3, (3, 1), [5]), (25, 2, [1, 2, 4, 8], []),
])
def test_longformer_per_head_dilation(n, radius, dilations, glob):
    g = longformer(n, radius=radius, dilation=dilations, global_indices=glob)
    check_invariants(g, n)
    heads = [longformer(n, radius=radius, dilation=d, global_indices=glob) for d in dilations]
    assert g.num_heads == len(dilations)
    assert g.head_mask.shape == (g.num_edges, len(dilations)) and g.head_mask.dtype == torch.bool
    # edges: the union of the per-head graphs; head h owns exactly the edges of graph h
    all_edges = set().union(*(set(labelled_edges(h)) for h in heads))
    edges = list(zip(*g.edge_index.tolist()))
    assert set(edges) == all_edges and len(edges) == len(all_edges)
    for h, hg in enumerate(heads):
        mine = {e for e, on in zip(edges, g.head_mask[:, h].tolist()) if on}
        assert mine == set(labelled_edges(hg))
        oracle = oracle_longformer(n, radius, dilations[h], glob)
        assert mine == set(oracle)
        # the per-head view, as a graph, equals the single-dilation graph's edges
        sub = g._select(g.head_mask[:, h])
        assert torch.equal(sub.edge_index, hg.edge_index)
    assert bool(g.head_mask.any(dim=1).all())  # no edge without a head


def test_longformer_per_head_labels_first_head_wins():
    g = longformer(15, radius=1, dilation=[1, 2], global_indices=[7])
    lab = labelled_edges(g)
    for (j, i), label in lab.items():
        if in_window(i, j, 1, 1):
            assert label == int(EdgeLabel.BAND)
        elif i == 7 or j == 7:
            assert label == int(EdgeLabel.GLOBAL)
        else:
            assert in_window(i, j, 1, 2) and label == int(EdgeLabel.DILATED)


def test_longformer_layer_schedule_is_a_list_of_graphs():
    from graphattn.compose import schedule

    layers = schedule([longformer(16, radius=2, dilation=d, global_indices=[0]) for d in (1, 1, 2, 4)])
    assert len(layers) == 4
    assert layers[0].equals(layers[1]) and not layers[1].equals(layers[2])
