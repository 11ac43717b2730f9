"""Tests for graphattn.rules.globals: global_tokens (ITC) and global_nodes (ETC)."""

from __future__ import annotations

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import global_nodes, global_tokens


def edge_set(g: AttentionGraph) -> set[tuple[int, int]]:
    return set(zip(*g.edge_index.tolist()))


def check_sorted_unique(g: AttentionGraph) -> None:
    assert g.edge_index.dtype == torch.int64
    code = g.edge_index[1] * max(g.num_nodes, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is None and g.head_mask is None


def oracle_global_tokens(n: int, glob) -> set[tuple[int, int]]:
    G = set(glob)
    return {(j, i) for i in range(n) for j in range(n) if i in G or j in G or i == j}


def oracle_global_nodes(n: int, count: int) -> set[tuple[int, int]]:
    total = n + count
    out = set()
    for i in range(total):
        for j in range(total):
            i_glob, j_glob = i >= n, j >= n
            # globals attend every node; tokens attend every global and themselves
            if i_glob or j_glob or i == j:
                out.add((j, i))
    return out


# ----------------------------------------------------------------------------- global_tokens
CASES_TOKENS = [
    (0, []), (1, []), (1, [0]), (2, [1]), (5, []), (5, [0]), (5, [4]), (5, [0, 4]),
    (7, [3, 1]), (7, [0, 1, 2, 3, 4, 5, 6]), (10, [2, 5, 9]), (13, [12, 0, 6]),
]


@pytest.mark.parametrize("n,glob", CASES_TOKENS)
def test_global_tokens_matches_oracle(n, glob):
    g = global_tokens(n, global_indices=glob)
    check_sorted_unique(g)
    assert g.num_nodes == n and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n
    pairs = oracle_global_tokens(n, glob)
    assert edge_set(g) == pairs and g.num_edges == len(pairs)
    assert set(g.edge_label.tolist()) <= {int(EdgeLabel.GLOBAL)}
    gs = len(set(glob))
    want = [n if i in glob else gs + 1 for i in range(n)]
    assert g.keys_per_query().tolist() == want
    # Global columns full: every query attends each global token.
    dense = g.to_dense()
    for c in glob:
        assert bool(dense[:, c].all()) and bool(dense[c, :].all())


@pytest.mark.parametrize("indices", [[4, 1], (1, 4), torch.tensor([4, 1]), torch.tensor([1, 4], dtype=torch.int32)])
def test_global_tokens_index_containers(indices):
    ref = global_tokens(8, global_indices=[1, 4])
    assert global_tokens(8, global_indices=indices).equals(ref)


def test_global_tokens_docstring_example():
    assert global_tokens(4, global_indices=[0]).keys_per_query().tolist() == [4, 2, 2, 2]


def test_global_tokens_empty_is_self_loops():
    g = global_tokens(6, global_indices=[])
    assert g.edge_index.tolist() == [list(range(6)), list(range(6))]


# ----------------------------------------------------------------------------- global_nodes
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_global_nodes_matches_oracle(n, count):
    g = global_nodes(n, num_global=count)
    check_sorted_unique(g)
    total = n + count
    assert g.num_nodes == total and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n + [int(NodeType.GLOBAL)] * count
    pairs = oracle_global_nodes(n, count)
    assert edge_set(g) == pairs and g.num_edges == len(pairs)
    assert set(g.edge_label.tolist()) <= {int(EdgeLabel.GLOBAL)}
    assert g.keys_per_query().tolist() == [count + 1] * n + [n + count] * count


def test_global_nodes_docstring_example():
    g = global_nodes(3, num_global=1)
    assert (g.num_nodes, g.keys_per_query().tolist()) == (4, [2, 2, 2, 4])


def test_global_nodes_every_node_attends_globals_and_globals_attend_all():
    n, count = 9, 3
    dense = global_nodes(n, num_global=count).to_dense()
    assert bool(dense[:, n:].all())       # every node (tokens and globals) attends every global
    assert bool(dense[n:, :].all())       # globals attend every node
    tok = dense[:n, :n]
    assert torch.equal(tok, torch.eye(n, dtype=torch.bool))  # tokens: only self among tokens
