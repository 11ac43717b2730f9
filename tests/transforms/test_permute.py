"""PermuteNodes: node-level attributes permuted, node ids relabelled, edges aligned, input intact."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphattn import AttentionGraph, rules
from graphattn.nn import GraphAttention
from graphattn.transforms import (AddAttentionGraph, AddExpanderEdges, AddVirtualNodes, PermuteNodes, bfs_order,
                                  rcm_order, spectral_order)


def make_graph(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = 2 * n
    data = Data(x=torch.randn(n, 4, generator=g), edge_index=torch.randint(0, n, (2, m), generator=g),
                edge_attr=torch.randn(m, 2, generator=g), y=torch.randint(0, 3, (n,), generator=g),
                pos=torch.randn(n, 2, generator=g), train_mask=torch.rand(n, generator=g) < 0.5,
                graph_y=torch.tensor([1.5]))
    data = AddExpanderEdges(2, seed=seed, clip=True)(data)
    return AddVirtualNodes(1)(data)


def random_order(edge_index, num_nodes):
    return torch.randperm(num_nodes, generator=torch.Generator().manual_seed(num_nodes))


@pytest.mark.parametrize("order_fn", [bfs_order, rcm_order, spectral_order, random_order])
def test_permutes_and_relabels(order_fn):
    data = make_graph()
    before = {k: v.clone() for k, v in data.items() if isinstance(v, torch.Tensor)}
    out = PermuteNodes(order_fn)(data)
    for k, v in before.items():  # input intact
        assert torch.equal(data[k], v)
    n = data.num_nodes
    order = order_fn(data.edge_index, n)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n)
    for key in ("x", "y", "pos", "train_mask", "virtual_node_mask"):
        assert torch.equal(out[key], data[key][order]), key
    for key in ("edge_index", "attn_edge_index"):
        assert torch.equal(out[key], inv[data[key]]), key
    for key in ("edge_attr", "attn_edge_label", "graph_y"):
        assert torch.equal(out[key], data[key]), key  # edges keep their order
    # The relabelled attention graph is isomorphic via the permutation: dense masks agree.
    d_in = AttentionGraph.from_edge_index(data.attn_edge_index, n).to_dense()
    d_out = AttentionGraph.from_edge_index(out.attn_edge_index, n).to_dense()
    assert torch.equal(d_out, d_in[order][:, order])


def test_attention_is_equivariant_under_permutation():
    data = make_graph(12, seed=3)
    out = PermuteNodes(rcm_order)(data)
    order = rcm_order(data.edge_index, data.num_nodes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = GraphAttention(4, 2).double()
    a = layer(data.x.double(), data.attn_edge_index)
    b = layer(out.x.double(), out.attn_edge_index)  # unsorted unique edges are accepted
    assert torch.allclose(b, a[order], atol=1e-12)


def test_band_after_rcm_covers_the_graph_edges():
    # The point of orderings: after RCM, a band of radius = bandwidth contains every local edge.
    n = 30
    line = torch.arange(n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    data = Data(x=torch.zeros(n, 1), edge_index=perm[torch.stack([line, line + 1])])
    out = AddAttentionGraph(lambda k: rules.band(k, radius=1))(PermuteNodes(rcm_order)(data))
    local = AttentionGraph.from_edge_index(out.edge_index, n).to_dense()
    attn = AttentionGraph.from_edge_index(out.attn_edge_index, n).to_dense()
    assert bool((attn | ~local).all())


def test_errors():
    data = make_graph()
    with pytest.raises(TypeError, match="order_fn"):
        PermuteNodes("rcm")
    with pytest.raises(ValueError, match="permutation"):
        PermuteNodes(lambda e, n: torch.zeros(n, dtype=torch.long))(data)
    with pytest.raises(ValueError, match="shape"):
        PermuteNodes(lambda e, n: torch.arange(n - 1))(data)
    with pytest.raises(TypeError, match="got a Batch"):
        PermuteNodes(bfs_order)(Batch.from_data_list([data, data]))
