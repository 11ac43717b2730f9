"""Attention transforms: stored edges, PyG batching offsets, no cross-graph edges,
to_data_list round trips, reproducible expanders, virtual nodes, input never mutated."""

import copy

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import Compose

from graphattn import AttentionGraph, EdgeLabel, rules
from graphattn.transforms import AddAttentionGraph, AddExpanderEdges, AddLocalEdges, AddVirtualNodes


def make_graph(n, seed=0, extra=True):
    g = torch.Generator().manual_seed(seed)
    m = 2 * n
    data = Data(x=torch.randn(n, 3, generator=g), edge_index=torch.randint(0, n, (2, m), generator=g),
                y=torch.randint(0, 4, (n,), generator=g))
    if extra:
        data.edge_attr = torch.randn(m, 2, generator=g)
        data.train_mask = torch.rand(n, generator=g) < 0.5
        data.graph_y = torch.tensor([seed])
    return data


def snapshot(data):
    return {k: (v, v.clone()) if isinstance(v, torch.Tensor) else (v, copy.copy(v)) for k, v in data.items()}


def assert_unchanged(data, snap):
    assert set(data.keys()) == set(snap)
    for k, (obj, val) in snap.items():
        assert data[k] is obj  # same object, no attribute replaced
        if isinstance(val, torch.Tensor):
            assert torch.equal(obj, val)  # and not written in place


def attention_graph(data, key="attn_edge_index"):
    return AttentionGraph.from_edge_index(data[key], data.num_nodes)


def dense(data, key="attn_edge_index"):
    return attention_graph(data, key).to_dense()


ALL_TRANSFORMS = [
    lambda: AddAttentionGraph(lambda n: rules.band(n, radius=1)),
    lambda: AddExpanderEdges(2, seed=0, clip=True),
    lambda: AddLocalEdges(),
    lambda: AddVirtualNodes(2),
    lambda: Compose([AddLocalEdges(), AddExpanderEdges(3, seed=1, clip=True), AddVirtualNodes(1)]),
]


@pytest.mark.parametrize("make", ALL_TRANSFORMS)
def test_input_never_mutated(make):
    data = make_graph(9)
    data = AddAttentionGraph(lambda n: rules.random(n, num_random_keys=1, seed=3))(data)  # existing edges
    snap = snapshot(data)
    out = make()(data)
    assert out is not data
    assert_unchanged(data, snap)


def test_add_attention_graph_stores_rule_edges():
    data = make_graph(7)
    out = AddAttentionGraph(lambda n: rules.bigbird(n, block_size=2, num_window_blocks=1, num_random_blocks=1,
                                                    num_global_blocks=1, seed=0))(data)
    g = rules.bigbird(7, block_size=2, num_window_blocks=1, num_random_blocks=1, num_global_blocks=1, seed=0)
    assert torch.equal(out.attn_edge_index, g.edge_index)
    assert torch.equal(out.attn_edge_label, g.edge_label.long())
    assert out.attn_edge_label.dtype == torch.int64
    assert torch.equal(out.edge_index, data.edge_index)


def test_add_attention_graph_merges_with_existing_edges():
    data = make_graph(10)
    band = lambda n: rules.band(n, radius=1)  # noqa: E731
    rand = lambda n: rules.random(n, num_random_keys=2, seed=5)  # noqa: E731
    out = AddAttentionGraph(rand)(AddAttentionGraph(band)(data))
    expected = rules.band(10, radius=1) | rules.random(10, num_random_keys=2, seed=5)
    assert torch.equal(out.attn_edge_index, expected.edge_index)
    assert torch.equal(out.attn_edge_label, expected.edge_label.long())  # band labels win on shared edges


def test_labels_optional_and_custom_key():
    data = make_graph(5)
    out = AddAttentionGraph(lambda n: rules.full(n), key="global_index", labels=False)(data)
    assert "global_index" in out and "global_label" not in out and "attn_edge_index" not in out
    out = AddAttentionGraph(lambda n: rules.full(n), key="global_index")(data)
    assert torch.equal(out.global_label, torch.full((25,), int(EdgeLabel.FULL)))


def test_add_attention_graph_errors():
    data = make_graph(5)
    with pytest.raises(TypeError, match="rule to be a callable"):
        AddAttentionGraph(rules.band(5, radius=1))
    with pytest.raises(ValueError, match="AddVirtualNodes"):
        AddAttentionGraph(lambda n: rules.global_nodes(n, num_global=2))(data)
    with pytest.raises(ValueError, match="num_nodes=4"):
        AddAttentionGraph(lambda n: rules.band(n - 1, radius=1))(data)
    with pytest.raises(TypeError, match="return an AttentionGraph"):
        AddAttentionGraph(lambda n: torch.zeros(2, 3, dtype=torch.long))(data)
    with pytest.raises(ValueError, match="per-head"):
        AddAttentionGraph(lambda n: rules.longformer(n, radius=1, dilation=[1, 2]))(data)
    with pytest.raises(ValueError, match="contain 'index'"):
        AddAttentionGraph(lambda n: rules.full(n), key="attn_edges")
    with pytest.raises(ValueError, match="other than 'edge_index'"):
        AddAttentionGraph(lambda n: rules.full(n), key="edge_index")
    with pytest.raises(ValueError, match="'index' only once"):
        AddAttentionGraph(lambda n: rules.full(n), key="index_index")
    with pytest.raises(TypeError, match="labels to be a bool"):
        AddAttentionGraph(lambda n: rules.full(n), labels=1)
    with pytest.raises(TypeError, match="got a Batch"):
        AddAttentionGraph(lambda n: rules.full(n))(Batch.from_data_list([data, data]))
    with pytest.raises(TypeError, match="torch_geometric.data.Data"):
        AddAttentionGraph(lambda n: rules.full(n))({"x": 1})


# ------------------------------------------------------------------ batching
def transformed_graphs():
    t = Compose([AddLocalEdges(), AddExpanderEdges(3, seed=0, clip=True), AddVirtualNodes(2)])
    sizes = [5, 1, 8, 2, 11]
    return [t(make_graph(n, seed=i)) for i, n in enumerate(sizes)]


def test_batching_offsets_and_no_cross_graph_edges():
    graphs = transformed_graphs()
    batch = Batch.from_data_list(graphs)
    ptr = batch.ptr
    assert int(batch.num_nodes) == sum(g.num_nodes for g in graphs)
    # Each graph's block is its own edges shifted by its offset, in order: block diagonal.
    expected = torch.cat([g.attn_edge_index + ptr[b] for b, g in enumerate(graphs)], dim=1)
    assert torch.equal(batch.attn_edge_index, expected)
    key, query = batch.attn_edge_index
    assert torch.equal(batch.batch[key], batch.batch[query])  # no edge crosses graphs
    # Labels are concatenated, never offset.
    assert torch.equal(batch.attn_edge_label, torch.cat([g.attn_edge_label for g in graphs]))
    # Dense view of the batch equals the block-diagonal of the per-graph dense masks.
    assert torch.equal(dense(batch), torch.block_diag(*[dense(g) for g in graphs]))
    # Virtual nodes stay with their graph and are marked.
    assert torch.equal(batch.virtual_node_mask, torch.cat([g.virtual_node_mask for g in graphs]))


def test_to_data_list_round_trip():
    graphs = transformed_graphs()
    back = Batch.from_data_list(graphs).to_data_list()
    assert len(back) == len(graphs)
    for a, b in zip(graphs, back):
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k


def test_virtual_nodes_in_a_batch_see_only_their_graph():
    graphs = transformed_graphs()
    batch = Batch.from_data_list(graphs)
    g = attention_graph(batch)
    vn = batch.virtual_node_mask.nonzero().flatten()
    for v in vn.tolist():
        b = int(batch.batch[v])
        keys = g.edge_index[0][g.edge_index[1] == v]
        assert torch.equal(keys, torch.arange(int(batch.ptr[b]), int(batch.ptr[b + 1])))


# ------------------------------------------------------------------ expanders
def regular_parts(data, n):
    g = attention_graph(data)
    d = g.to_dense()
    assert torch.equal(d, d.t())  # undirected
    assert bool(d.diagonal().all())  # self-loops
    return g.keys_per_query()


def test_expander_is_regular_and_labelled():
    data = make_graph(12)
    out = AddExpanderEdges(4, seed=0)(data)
    assert regular_parts(out, 12).tolist() == [5] * 12
    assert bool((out.attn_edge_label == int(EdgeLabel.RANDOM)).all())


def test_expander_reproducible():
    data = make_graph(20)
    a = AddExpanderEdges(3, seed=7)
    assert torch.equal(a(data).attn_edge_index, a(data).attn_edge_index)  # resample=False: fixed
    assert torch.equal(a(data).attn_edge_index, AddExpanderEdges(3, seed=7)(data).attn_edge_index)
    assert not torch.equal(a(data).attn_edge_index, AddExpanderEdges(3, seed=8)(data).attn_edge_index)
    # Different graphs of the same size get different expanders (a random expander per graph).
    other = make_graph(20, seed=1)
    assert not torch.equal(a(data).attn_edge_index, a(other).attn_edge_index)
    # Same structure, different features: still different.
    feat = data.clone()
    feat.x = feat.x + 1
    assert not torch.equal(a(data).attn_edge_index, a(feat).attn_edge_index)


def test_expander_resample_per_epoch_reproducibly():
    graphs = [make_graph(16, seed=s) for s in range(3)]
    t1, t2 = AddExpanderEdges(3, seed=1, resample=True), AddExpanderEdges(3, seed=1, resample=True)
    epochs1 = [[t1(g).attn_edge_index for g in graphs] for _ in range(3)]
    # The second run visits the graphs in another order each epoch: same draws per (graph, epoch).
    epochs2 = []
    for e in range(3):
        order = [(e + i) % 3 for i in range(3)]
        got = {i: t2(graphs[i]).attn_edge_index for i in order}
        epochs2.append([got[i] for i in range(3)])
    for e in range(3):
        for i in range(3):
            assert torch.equal(epochs1[e][i], epochs2[e][i])
    assert not torch.equal(epochs1[0][0], epochs1[1][0])  # a new expander each epoch
    fixed = AddExpanderEdges(3, seed=1)
    assert torch.equal(fixed(graphs[0]).attn_edge_index, epochs1[0][0])  # round 0 = the fixed one


def test_expander_seed_generator_and_none():
    data = make_graph(14)
    a = AddExpanderEdges(3, seed=torch.Generator().manual_seed(3))(data)
    b = AddExpanderEdges(3, seed=torch.Generator().manual_seed(3))(data)
    assert torch.equal(a.attn_edge_index, b.attn_edge_index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        c = AddExpanderEdges(3)(data)
        torch.manual_seed(11)
        d = AddExpanderEdges(3)(data)
    assert torch.equal(c.attn_edge_index, d.attn_edge_index)


@pytest.mark.parametrize("n, degree, used", [(3, 4, 2), (5, 3, 2), (5, 4, 4), (1, 2, 0), (4, 3, 3), (6, 3, 3)])
def test_expander_small_graphs(n, degree, used):
    data = make_graph(n)
    t = AddExpanderEdges(degree, seed=0, clip=True)
    assert t.degree_for(n) == used
    assert regular_parts(t(data), n).tolist() == [used + 1] * n
    if used != degree:
        with pytest.raises(ValueError, match="clip=True"):
            AddExpanderEdges(degree, seed=0)(data)


def test_expander_errors():
    with pytest.raises(ValueError, match="degree >= 0"):
        AddExpanderEdges(-1)
    with pytest.raises(TypeError, match="resample to be a bool"):
        AddExpanderEdges(2, resample="yes")
    with pytest.raises(TypeError, match="seed"):
        AddExpanderEdges(2, seed="x")


# ------------------------------------------------------------------ virtual nodes and local edges
def test_virtual_nodes_extend_everything():
    data = make_graph(6)
    data.score = torch.randn(6)
    data.y_float = torch.randn(6, 2)
    out = AddVirtualNodes(2)(data)
    assert out.num_nodes == 8
    assert torch.equal(out.x, torch.cat([data.x, torch.zeros(2, 3)]))
    assert torch.equal(out.y, torch.cat([data.y, torch.tensor([-100, -100])]))
    assert torch.equal(out.train_mask, torch.cat([data.train_mask, torch.tensor([False, False])]))
    assert torch.equal(out.score, torch.cat([data.score, torch.zeros(2)]))
    assert torch.equal(out.virtual_node_mask, torch.tensor([False] * 6 + [True] * 2))
    # Edge-level and graph-level attributes and the local graph are untouched.
    for key in ("edge_index", "edge_attr", "graph_y"):
        assert out[key] is data[key]
    # With no previous attention edges: the star of rules.global_nodes plus self-loops.
    g = rules.global_nodes(6, num_global=2)
    assert torch.equal(out.attn_edge_index, g.edge_index)
    assert torch.equal(out.attn_edge_label, g.edge_label.long())
    # cross_entropy over all nodes ignores the virtual ones
    logits = torch.randn(8, 4)
    full = torch.nn.functional.cross_entropy(logits, out.y)
    assert torch.allclose(full, torch.nn.functional.cross_entropy(logits[:6], data.y))


def test_virtual_nodes_float_y_is_nan_and_repeat_extends_mask():
    data = Data(x=torch.ones(3, 1), y=torch.ones(3), edge_index=torch.tensor([[0], [1]]))
    out = AddVirtualNodes(1)(AddVirtualNodes(1)(data))
    assert out.num_nodes == 5
    assert torch.isnan(out.y[3:]).all()
    assert out.virtual_node_mask.tolist() == [False, False, False, True, True]


def test_virtual_nodes_merge_with_existing_attention():
    data = make_graph(7)
    base = AddExpanderEdges(2, seed=4)(data)
    out = AddVirtualNodes(1)(base)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:7, :7] = dense(base)
    mask[7, :] = True  # the virtual node attends everything
    mask[:, 7] = True  # and everything attends it
    assert torch.equal(dense(out), mask)
    labels = out.attn_edge_label
    touches = (out.attn_edge_index == 7).any(0)
    assert bool((labels[touches] == int(EdgeLabel.GLOBAL)).all())
    assert bool((labels[~touches] == int(EdgeLabel.RANDOM)).all())


def test_add_local_edges():
    data = make_graph(6)
    out = AddLocalEdges()(data)
    g = AttentionGraph.from_edge_index(data.edge_index, 6).with_self_loops()
    assert torch.equal(out.attn_edge_index, g.edge_index)
    assert torch.equal(out.attn_edge_label, g.edge_label.long())
    out = AddLocalEdges(self_loops=False)(data)
    assert torch.equal(out.attn_edge_index, AttentionGraph.from_edge_index(data.edge_index, 6).edge_index)

