"""Tests for graphattn.rules.star: the Star-Transformer graph."""

from __future__ import annotations

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import star_transformer


def labelled_edges(g: AttentionGraph) -> dict[tuple[int, int], int]:
    key, query = g.edge_index.tolist()
    return dict(zip(zip(key, query), g.edge_label.tolist()))


def oracle_star(n: int, cyclic: bool) -> dict[tuple[int, int], int]:
    """(key, query) -> label, built with plain loops over the documented edge set."""
    relay = 2 * n
    out: dict[tuple[int, int], int] = {}
    for i in range(n):
        neighbours = {i}
        for d in (-1, 1):
            j = i + d
            if cyclic:
                neighbours.add(j % n)
            elif 0 <= j < n:
                neighbours.add(j)
        for j in neighbours | {n + i, relay}:
            out[(j, i)] = int(EdgeLabel.RING)
    for j in list(range(n)) + [relay]:
        out[(j, relay)] = int(EdgeLabel.RADICAL)
    return out


def check_structure(g: AttentionGraph, n: int) -> None:
    assert g.num_nodes == 2 * n + 1
    assert g.num_tokens == n
    assert g.node_type.tolist() == (
        [int(NodeType.TOKEN)] * n + [int(NodeType.EMBEDDING)] * n + [int(NodeType.RELAY)])
    code = g.edge_index[1] * g.num_nodes + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is None and g.head_mask is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13])
@pytest.mark.parametrize("cyclic", [True, False])
def test_star_matches_oracle(n, cyclic):
    g = star_transformer(n, cyclic=cyclic)
    check_structure(g, n)
    assert labelled_edges(g) == oracle_star(n, cyclic)


@pytest.mark.parametrize("n", [3, 4, 7, 20])
def test_star_counts_cyclic(n):
    g = star_transformer(n)
    assert g.num_edges == 6 * n + 1
    kpq = g.keys_per_query().tolist()
    assert kpq[:n] == [5] * n                  # satellites: i-1, i, i+1, e_i, relay
    assert kpq[n:2 * n] == [0] * n             # embedding nodes are keys only
    assert kpq[2 * n] == n + 1                 # relay: itself and every satellite
    ring = g.select_labels(EdgeLabel.RING)
    radical = g.select_labels(EdgeLabel.RADICAL)
    assert ring.num_edges == 5 * n and radical.num_edges == n + 1
    assert set(ring.edge_index[1].tolist()) == set(range(n))
    assert set(radical.edge_index[1].tolist()) == {2 * n}


@pytest.mark.parametrize("n", [3, 4, 7])
def test_star_open_ring_ends(n):
    g = star_transformer(n, cyclic=False)
    kpq = g.keys_per_query().tolist()
    assert kpq[0] == 4 and kpq[n - 1] == 4 and kpq[1:n - 1] == [5] * (n - 2)
    assert g.num_edges == 6 * n - 1
    dense = g.to_dense()
    assert not bool(dense[0, n - 1]) and not bool(dense[n - 1, 0])  # the ring does not close
    closed = star_transformer(n).to_dense()
    assert bool(closed[0, n - 1]) and bool(closed[n - 1, 0])


def test_star_one_satellite():
    for cyclic in (True, False):
        g = star_transformer(1, cyclic=cyclic)
        check_structure(g, 1)
        # satellite 0: itself, e_0 = 1, relay = 2; relay: satellite 0 and itself
        assert g.edge_index.tolist() == [[0, 1, 2, 0, 2], [0, 0, 0, 2, 2]]
        assert g.edge_label.tolist() == [int(EdgeLabel.RING)] * 3 + [int(EdgeLabel.RADICAL)] * 2


def test_star_two_satellites_dedup():
    for cyclic in (True, False):
        g = star_transformer(2, cyclic=cyclic)
        # i-1 and i+1 are the same satellite: 4 distinct keys each, 2*4 + 3 edges
        assert g.keys_per_query().tolist() == [4, 4, 0, 0, 3]
        assert g.num_edges == 11


def test_star_docstring_example():
    g = star_transformer(4)
    assert (g.num_nodes, g.num_edges) == (9, 25)
    assert g.keys_per_query().tolist() == [5, 5, 5, 5, 0, 0, 0, 0, 5]


def test_star_embedding_node_of_each_satellite():
    n = 6
    g = star_transformer(n)
    key, query = g.edge_index
    for i in range(n):
        emb_keys = key[(query == i) & (key >= n) & (key < 2 * n)].tolist()
        assert emb_keys == [n + i]
    # embedding nodes are attended only by their own satellite
    for e in range(n, 2 * n):
        assert query[key == e].tolist() == [e - n]


def test_star_labels_split_the_phases():
    g = star_transformer(5)
    ring, radical = g.select_labels(EdgeLabel.RING), g.select_labels(EdgeLabel.RADICAL)
    assert ring.num_edges + radical.num_edges == g.num_edges
    assert torch.equal((ring | radical).to_dense(), g.to_dense())
