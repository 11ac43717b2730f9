"""SparseGPSConv against PyG's GPSConv (dense per-graph attention), batch vs per-graph
equality for SparseGPSConv and GraphAttention, gradients, PyG Sequential."""

import copy

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv, GINConv, GPSConv
from torch_geometric.transforms import Compose

from graphattn import AttentionGraph, rules
from graphattn.nn import GraphAttention, SparseGPSConv
from graphattn.transforms import AddAttentionGraph, AddExpanderEdges, AddLocalEdges, AddVirtualNodes

C, H = 8, 2


@pytest.fixture(autouse=True)
def _rng():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def graphs(transform, sizes=(5, 1, 9, 3)):
    out = []
    for i, n in enumerate(sizes):
        g = torch.Generator().manual_seed(i)
        out.append(transform(Data(x=torch.randn(n, C, generator=g, dtype=torch.float64),
                                  edge_index=torch.randint(0, n, (2, 2 * n), generator=g))))
    return out


def full_per_graph(n):
    return rules.full(n)


def copy_into(sparse: SparseGPSConv, dense: GPSConv):
    """Give the sparse layer the dense layer's weights (MHA's packed in_proj -> q, k, v)."""
    if sparse.conv is not None:
        sparse.conv.load_state_dict(dense.conv.state_dict())
    w, b = dense.attn.in_proj_weight, dense.attn.in_proj_bias
    with torch.no_grad():
        for p, lin in enumerate((sparse.attn.q_proj, sparse.attn.k_proj, sparse.attn.v_proj)):
            lin.weight.copy_(w[p * C:(p + 1) * C])
            lin.bias.copy_(b[p * C:(p + 1) * C])
        sparse.attn.out_proj.weight.copy_(dense.attn.out_proj.weight)
        sparse.attn.out_proj.bias.copy_(dense.attn.out_proj.bias)
    sparse.mlp.load_state_dict(dense.mlp.state_dict())
    for a, b_ in ((sparse.norm1, dense.norm1), (sparse.norm2, dense.norm2), (sparse.norm3, dense.norm3)):
        if a is not None:
            a.load_state_dict(b_.state_dict())


@pytest.mark.parametrize("norm, train", [("batch_norm", False), ("batch_norm", True), ("layer_norm", True),
                                         ("graph_norm", True), (None, True)])
@pytest.mark.parametrize("make_conv", [lambda: GCNConv(C, C), lambda: GINConv(torch.nn.Linear(C, C)), lambda: None])
def test_full_attention_graph_equals_pyg_gpsconv(norm, train, make_conv):
    batch = Batch.from_data_list(graphs(AddAttentionGraph(full_per_graph)))
    dense = GPSConv(C, make_conv(), heads=H, norm=norm).double()
    sparse = SparseGPSConv(C, copy.deepcopy(dense.conv), heads=H, norm=norm).double()
    copy_into(sparse, dense)
    dense.train(train)
    sparse.train(train)
    want = dense(batch.x, batch.edge_index, batch.batch)
    got = sparse(batch.x, batch.edge_index, batch.attn_edge_index, batch.batch)
    assert torch.allclose(got, want, atol=1e-10, rtol=1e-10)


def exphormer():
    return Compose([AddLocalEdges(), AddExpanderEdges(2, seed=0, clip=True), AddVirtualNodes(1)])


@pytest.mark.parametrize("norm", [None, "layer_norm", "graph_norm"])
def test_batch_equals_per_graph(norm):
    # Per-graph norms (PyG's layer_norm in graph mode, graph_norm) keep graphs independent.
    data_list = graphs(exphormer())
    batch = Batch.from_data_list(data_list)
    layer = SparseGPSConv(C, GCNConv(C, C), heads=H, norm=norm).double()
    got = layer(batch.x, batch.edge_index, batch.attn_edge_index, batch.batch)
    want = torch.cat([layer(d.x, d.edge_index, d.attn_edge_index, torch.zeros(d.num_nodes, dtype=torch.long))
                      for d in data_list])
    assert torch.allclose(got, want, atol=1e-12)


def test_graph_attention_batch_equals_per_graph():
    data_list = graphs(exphormer())
    batch = Batch.from_data_list(data_list)
    attn = GraphAttention(C, H).double()
    got, w = attn(batch.x, batch.attn_edge_index, return_attention_weights=True)
    parts = [attn(d.x, d.attn_edge_index, return_attention_weights=True) for d in data_list]
    assert torch.allclose(got, torch.cat([p[0] for p in parts]), atol=1e-12)
    assert torch.allclose(w, torch.cat([p[1] for p in parts]), atol=1e-12)
    # The batched attention weights sum to one per query, within its own graph only.
    key, query = batch.attn_edge_index
    assert torch.equal(batch.batch[key], batch.batch[query])
    sums = torch.zeros(batch.num_nodes, H, dtype=w.dtype).index_add_(0, query, w)
    assert torch.allclose(sums, torch.ones_like(sums))


def test_attention_graph_input_equals_edge_index_input():
    d = graphs(exphormer(), sizes=(10,))[0]
    layer = SparseGPSConv(C, GCNConv(C, C), heads=H, norm=None).double()
    g = AttentionGraph.from_edge_index(d.attn_edge_index, d.num_nodes)
    assert torch.allclose(layer(d.x, d.edge_index, g), layer(d.x, d.edge_index, d.attn_edge_index), atol=1e-12)


def test_gradients_flow_and_gradcheck():
    d = graphs(exphormer(), sizes=(6,))[0]
    layer = SparseGPSConv(C, GCNConv(C, C), heads=H, norm="layer_norm").double()
    x = d.x.clone().requires_grad_(True)
    layer(x, d.edge_index, d.attn_edge_index).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert torch.autograd.gradcheck(lambda t: layer(t, d.edge_index, d.attn_edge_index), (x,))


def test_attention_part_is_sparse():
    # Changing a node outside every attention and local neighbourhood of node 0 leaves it alone.
    n = 12
    line = torch.arange(n - 1)
    edge_index = torch.stack([torch.cat([line, line + 1]), torch.cat([line + 1, line])])
    attn = rules.band(n, radius=1).edge_index
    layer = SparseGPSConv(C, GCNConv(C, C), heads=H, norm=None).double().eval()
    x = torch.randn(n, C, dtype=torch.float64)
    y = x.clone()
    y[5] += 1.0
    a, b = layer(x, edge_index, attn), layer(y, edge_index, attn)
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[5], b[5])


def test_graph_attention_in_pyg_sequential():
    from torch_geometric.nn import Sequential

    d = graphs(AddExpanderEdges(2, seed=0, clip=True), sizes=(7,))[0]
    attn = GraphAttention(C, H).double()
    model = Sequential("x, edge_index", [
        (attn, "x, edge_index -> x"),
        torch.nn.ReLU(),
        (GCNConv(C, 4).double(), "x, edge_index -> x"),
    ])
    out = model(d.x, d.attn_edge_index)
    want = model[2](torch.relu(attn(d.x, d.attn_edge_index)), d.attn_edge_index)
    assert out.shape == (7, 4) and torch.allclose(out, want)


def test_errors():
    with pytest.raises(ValueError, match="divisible by heads"):
        SparseGPSConv(6, None, heads=4)
    with pytest.raises(TypeError, match="conv"):
        SparseGPSConv(4, "gcn")
    with pytest.raises(ValueError, match="dropout <= 1"):
        SparseGPSConv(4, None, dropout=2.0)
    layer = SparseGPSConv(4, None, norm=None)
    with pytest.raises(ValueError, match=r"x of shape \[N, 4\]"):
        layer(torch.zeros(3, 5), None, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="attn_edge_index"):
        layer(torch.zeros(3, 4), None, [[0], [1]])
    assert "SparseGPSConv(4" in repr(layer)
