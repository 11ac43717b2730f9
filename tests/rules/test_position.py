"""Tests for graphattn.rules.position: full, band, dilated, block_local, against naive oracles."""

from __future__ import annotations

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import band, block_local, dilated, full


# ----------------------------------------------------------------------------- helpers / oracles
def edge_set(g: AttentionGraph) -> set[tuple[int, int]]:
    """The graph's edges as a set of (key, query)."""
    return set(zip(*g.edge_index.tolist()))


def check_invariants(g: AttentionGraph, n: int, label: EdgeLabel) -> None:
    assert g.num_nodes == n
    assert g.edge_index.dtype == torch.int64
    assert g.edge_index.dim() == 2 and g.edge_index.shape[0] == 2
    assert g.edge_label.shape == (g.num_edges,) and g.edge_label.dtype == torch.int8
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n
    assert g.num_tokens == n
    assert g.relative is None and g.head_mask is None
    if g.num_edges:
        assert int(g.edge_index.min()) >= 0 and int(g.edge_index.max()) < n
    # Sorted by (query, key) and unique: the edge codes query*N+key strictly increase.
    code = g.edge_index[1] * max(n, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert set(g.edge_label.tolist()) <= {int(label)}


def oracle_pairs(n: int, attends) -> set[tuple[int, int]]:
    """Set of (key j, query i) over the naive double loop."""
    return {(j, i) for i in range(n) for j in range(n) if attends(i, j)}


def oracle_graph(n: int, pairs, label: EdgeLabel) -> AttentionGraph:
    ei = torch.tensor(sorted(pairs, key=lambda e: (e[1], e[0])), dtype=torch.int64).reshape(-1, 2).t()
    return AttentionGraph.from_edge_index(
        ei, n, edge_label=torch.full((ei.shape[1],), int(label), dtype=torch.int8))


def assert_matches(g: AttentionGraph, n: int, pairs, label: EdgeLabel) -> None:
    check_invariants(g, n, label)
    assert edge_set(g) == pairs
    assert g.num_edges == len(pairs)
    assert g.equals(oracle_graph(n, pairs, label))
    dense = torch.zeros(n, n, dtype=torch.bool)
    for j, i in pairs:
        dense[i, j] = True
    assert torch.equal(g.to_dense(), dense)


SIZES = [0, 1, 2, 3, 4, 5, 7, 10, 13]


# ----------------------------------------------------------------------------- full
@pytest.mark.parametrize("n", SIZES)
def test_full_matches_oracle(n):
    g = full(n)
    assert_matches(g, n, oracle_pairs(n, lambda i, j: True), EdgeLabel.FULL)
    assert g.keys_per_query().tolist() == [n] * n
    assert g.num_edges == n * n


def test_full_doctest_order():
    assert full(2).edge_index.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]


# ----------------------------------------------------------------------------- band
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 6, 20])
@pytest.mark.parametrize("causal", [False, True])
def test_band_matches_oracle(n, radius, causal):
    g = band(n, radius=radius, causal=causal)
    pairs = oracle_pairs(n, lambda i, j: abs(i - j) <= radius and (not causal or j <= i))
    assert_matches(g, n, pairs, EdgeLabel.BAND)
    want = [min(i, radius) + 1 + (0 if causal else min(n - 1 - i, radius)) for i in range(n)]
    assert g.keys_per_query().tolist() == want


@pytest.mark.parametrize("radius", [0, 1, 4, 7])
def test_band_interior_keys_per_query(radius):
    n = 61
    kpq = band(n, radius=radius).keys_per_query()
    assert (kpq[radius:n - radius] == 2 * radius + 1).all()
    assert int(kpq.max()) == 2 * radius + 1
    kc = band(n, radius=radius, causal=True).keys_per_query()
    assert (kc[radius:] == radius + 1).all()
    assert kc[:radius].tolist() == list(range(1, radius + 1))


def test_band_radius_zero_is_self_loops_only():
    g = band(9, radius=0)
    assert g.edge_index.tolist() == [list(range(9)), list(range(9))]


def test_band_radius_larger_than_n_is_full():
    for n in (1, 4, 9):
        assert edge_set(band(n, radius=n + 3)) == edge_set(full(n))
        assert edge_set(band(n, radius=n - 1)) == edge_set(full(n))
        lower = oracle_pairs(n, lambda i, j: j <= i)
        assert edge_set(band(n, radius=n + 3, causal=True)) == lower


def test_band_causal_is_band_causal_method():
    g = band(17, radius=3)
    assert band(17, radius=3, causal=True).equals(g.causal())


def test_band_docstring_example():
    assert band(5, radius=1).edge_index.tolist() == [
        [0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4], [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]]


# ----------------------------------------------------------------------------- dilated
@pytest.mark.parametrize("n", SIZES + [17])
@pytest.mark.parametrize("radius", [0, 1, 2, 4])
@pytest.mark.parametrize("dilation", [1, 2, 3, 5, 30])
@pytest.mark.parametrize("causal", [False, True])
def test_dilated_matches_oracle(n, radius, dilation, causal):
    g = dilated(n, radius=radius, dilation=dilation, causal=causal)

    def attends(i, j):
        return abs(i - j) <= radius * dilation and (i - j) % dilation == 0 and (not causal or j <= i)

    label = EdgeLabel.BAND if dilation == 1 else EdgeLabel.DILATED
    assert_matches(g, n, oracle_pairs(n, attends), label)
    want = [sum(1 for m in range(-radius, 1 if causal else radius + 1) if 0 <= i + m * dilation < n)
            for i in range(n)]
    assert g.keys_per_query().tolist() == want


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("dilation", [2, 3])
def test_dilated_interior_keys_and_span(radius, dilation):
    n = 80
    g = dilated(n, radius=radius, dilation=dilation)
    span = radius * dilation
    kpq = g.keys_per_query()
    assert (kpq[span:n - span] == 2 * radius + 1).all()
    # The 2r+1 keys of an interior row are spread over 2rd+1 positions.
    i = n // 2
    keys = g.edge_index[0, g.edge_index[1] == i].tolist()
    assert keys == [i + m * dilation for m in range(-radius, radius + 1)]
    assert keys[-1] - keys[0] + 1 == 2 * radius * dilation + 1


def test_dilated_one_is_band_with_band_label():
    for causal in (False, True):
        d1 = dilated(23, radius=3, dilation=1, causal=causal)
        assert d1.equals(band(23, radius=3, causal=causal))
        assert set(d1.edge_label.tolist()) == {int(EdgeLabel.BAND)}
    assert set(dilated(23, radius=3, dilation=2).edge_label.tolist()) == {int(EdgeLabel.DILATED)}


def test_dilated_docstring_example():
    g = dilated(7, radius=1, dilation=2, queries=range(3, 4))
    assert g.edge_index.tolist() == [[1, 3, 5], [3, 3, 3]]


# ----------------------------------------------------------------------------- block_local
@pytest.mark.parametrize("n", SIZES + [16, 17])
@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 16, 40])
def test_block_local_matches_oracle(n, block):
    g = block_local(n, block_size=block)
    assert_matches(g, n, oracle_pairs(n, lambda i, j: i // block == j // block), EdgeLabel.BLOCK)
    want = [min(block, n - (i // block) * block) for i in range(n)]
    assert g.keys_per_query().tolist() == want
    # Every query of a block has the same key set: the whole block.
    for i in range(n):
        b0 = (i // block) * block
        assert g.edge_index[0, g.edge_index[1] == i].tolist() == list(range(b0, min(b0 + block, n)))


def test_block_local_block_one_is_self_loops_and_large_block_is_full():
    assert edge_set(block_local(7, block_size=1)) == {(i, i) for i in range(7)}
    assert edge_set(block_local(7, block_size=7)) == edge_set(full(7))
    assert edge_set(block_local(7, block_size=100)) == edge_set(full(7))


def test_block_local_docstring_example():
    assert block_local(5, block_size=2).keys_per_query().tolist() == [2, 2, 2, 2, 1]


# ----------------------------------------------------------------------------- misc
@pytest.mark.parametrize("make", [
    lambda n: full(n), lambda n: band(n, radius=2), lambda n: band(n, radius=2, causal=True),
    lambda n: dilated(n, radius=2, dilation=3), lambda n: block_local(n, block_size=3),
])
def test_self_loops_present(make):
    for n in (1, 2, 9):
        g = make(n)
        assert {(i, i) for i in range(n)} <= edge_set(g)


def test_int_like_arguments_accepted():
    # torch integer scalars are ints for the checks.
    assert band(torch.tensor(6), radius=torch.tensor(1)).equals(band(6, radius=1))
