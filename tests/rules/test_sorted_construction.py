"""Rules that hand their edges to the graph unchecked (built unique and sorted by construction)
must produce exactly what validating and coalescing the same edges gives."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import AttentionGraph, rules


def assert_coalesced(g: AttentionGraph) -> None:
    code = g.edge_index[1] * max(g.num_nodes, 1) + g.edge_index[0]
    assert code.numel() < 2 or bool((code[1:] > code[:-1]).all()), "edges not unique and sorted"
    ref = AttentionGraph.from_edge_index(g.edge_index[:, torch.randperm(g.num_edges)].flip(1), g.num_nodes)
    assert torch.equal(ref.edge_index, g.edge_index)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.integers(1, 4), st.booleans(), st.integers(0, 200))
def test_position_rules_build_coalesced_edges(n, k, flag, seed):
    half = range(n // 3, n)
    for g in (
        rules.random(n, num_random_keys=min(k, n - 1), seed=seed),
        rules.random(n, num_random_keys=min(k, n - 1), seed=seed, queries=half),
        rules.erdos_renyi(n, p=min(1.0, k / max(n, 1) * (1 + flag)), seed=seed),
        rules.erdos_renyi(n, p=0.97, seed=seed, queries=half),
        rules.star_transformer(n, cyclic=flag),
        rules.star_transformer(n, cyclic=flag, queries=range(n // 2, 2 * n + 1)),
        rules.bp_transformer(n, k=k, causal=flag),
        rules.bp_transformer(n, k=k, causal=flag, queries=half),
    ):
        assert_coalesced(g)


def test_erdos_renyi_rows_longer_than_one_chunk():
    # Rows with more keys than the first chunk of draws (about 1.1 x the mean, plus 8) continue
    # in later chunks; the graph must still be the coalesced one, with every row's keys in order.
    n, p = 3000, 40 / 3000
    g = rules.erdos_renyi(n, p=p, seed=7)
    assert_coalesced(g)
    assert int(g.keys_per_query().max()) - 1 > int(1.1 * (n - 1) * p) + 8
    assert g.query_slice(100, 2000).equals(rules.erdos_renyi(n, p=p, seed=7, queries=range(100, 2000)))
