import networkx as nx
import pytest
import torch

from graphattn import AttentionGraph, EdgeLabel, NodeType, rules


def random_mask(n, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=gen) < p


def test_from_edge_index_sorts_dedups_and_keeps_first_label():
    ei = torch.tensor([[2, 0, 2, 1], [1, 1, 1, 0]])
    g = AttentionGraph.from_edge_index(ei, 3, edge_label=torch.tensor([5, 6, 7, 2]))
    assert g.edge_index.tolist() == [[1, 0, 2], [0, 1, 1]]
    assert g.edge_label.tolist() == [2, 6, 5]


def test_from_edge_index_merges_head_masks_with_or():
    ei = torch.tensor([[0, 0], [1, 1]])
    hm = torch.tensor([[True, False], [False, True]])
    g = AttentionGraph.from_edge_index(ei, 2, head_mask=hm)
    assert g.head_mask.tolist() == [[True, True]]


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_dense_round_trip(n):
    mask = random_mask(n, 0.3, n)
    g = AttentionGraph.from_dense(mask)
    assert torch.equal(g.to_dense(), mask)
    # mask[i, j] = query i attends key j  <=>  edge (j, i)
    for j, i in g.edge_index.t().tolist():
        assert mask[i, j]
    assert g.num_edges == int(mask.sum())


def test_dense_matches_sdpa_convention():
    g = rules.band(6, radius=1, causal=True)
    mask = g.to_dense()
    q = torch.randn(1, 6, 4, dtype=torch.float64)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=False,
                                                           attn_mask=torch.ones(6, 6).tril().bool() & mask)
    assert torch.allclose(out, ref)
    assert mask.tril().equal(mask)  # causal: no query attends a later key


def test_networkx_round_trip_keeps_types_labels_relative():
    g = rules.etc(6, num_global=2, radius=1, segments=[4, 2])
    G = g.to_networkx()
    assert isinstance(G, nx.DiGraph)
    assert G.number_of_nodes() == g.num_nodes and G.number_of_edges() == g.num_edges
    assert G.nodes[6]["type"] == "global" and G.nodes[0]["type"] == "token"
    assert G.edges[1, 0]["label"] == "band"  # key 1 -> query 0
    back = AttentionGraph.from_networkx(G)
    assert back.equals(g)


def test_networkx_undirected_gives_both_directions():
    G = nx.path_graph(4)
    g = AttentionGraph.from_networkx(G)
    assert g.num_edges == 6
    assert torch.equal(g.to_dense(), g.to_dense().t())


def test_networkx_real_graph_matches_adjacency():
    G = nx.karate_club_graph()
    g = AttentionGraph.from_networkx(G)
    A = torch.tensor(nx.to_numpy_array(G, nodelist=list(G.nodes)) > 0)
    assert torch.equal(g.to_dense(), A)


def test_pyg_conversions():
    from torch_geometric import EdgeIndex
    from torch_geometric.utils import to_dense_adj

    g = rules.star_transformer(5)
    data = g.to_pyg()
    assert data.num_nodes == g.num_nodes
    assert torch.equal(data.edge_index, g.edge_index)
    assert torch.equal(data.node_type, g.node_type)
    # PyG's dense adjacency is [source, target] = [key, query]: the transpose of our mask.
    assert torch.equal(to_dense_adj(data.edge_index, max_num_nodes=g.num_nodes)[0].bool(), g.to_dense().t())
    ei = g.to_edge_index()
    assert isinstance(ei, EdgeIndex) and ei.is_sorted_by_col
    assert ei.sparse_size() == (g.num_nodes, g.num_nodes)
    assert g.to_edge_index() is ei  # cached


def test_to_device_and_equals():
    g = rules.longformer(10, radius=1, dilation=[1, 2])
    h = g.to("cpu")
    assert h.equals(g) and h is not g
    assert not g.equals(rules.band(10, radius=1))


def test_immutable():
    g = rules.band(4, radius=1)
    with pytest.raises(AttributeError):
        g.num_nodes = 3


def test_query_slice_and_ptr():
    g = rules.band(9, radius=2)
    ptr = g.query_ptr
    assert ptr[-1] == g.num_edges
    assert torch.equal(ptr.diff(), g.keys_per_query())
    s = g.query_slice(3, 6)
    assert set(s.edge_index[1].tolist()) == {3, 4, 5}
    assert s.num_nodes == 9


def test_causal_keeps_extra_node_edges():
    g = rules.global_nodes(5, num_global=1) | rules.band(5, radius=1).add_nodes(1, node_type=NodeType.GLOBAL)
    c = g.causal()
    m = c.to_dense()
    assert not m[:5, :5].triu(1).any()
    assert m[5].all() and m[:5, 5].all()  # the global node still attends every token and back


def test_self_loop_control():
    g = rules.random(8, num_random_keys=2, seed=0)
    no = g.without_self_loops()
    assert not torch.diagonal(no.to_dense()).any()
    yes = no.with_self_loops()
    assert torch.diagonal(yes.to_dense()).all()
    assert torch.equal(yes.to_dense(), g.to_dense())
    assert set(yes.edge_label[yes.edge_index[0] == yes.edge_index[1]].tolist()) == {int(EdgeLabel.SELF)}


def test_select_labels_splits_star_phases():
    g = rules.star_transformer(6)
    ring, radical = g.select_labels(EdgeLabel.RING), g.select_labels(EdgeLabel.RADICAL)
    assert ring.num_edges == 30 and radical.num_edges == 7
    assert (ring | radical).equals(g)


def test_repr_and_to_string():
    g = rules.band(5, radius=1)
    r = repr(g)
    assert "num_nodes=5" in r and "num_edges=13" in r and "max=3" in r
    assert g.to_string().splitlines()[0] == "##..."
    assert "first 3 of 5" in g.to_string(max_nodes=3)


def test_constructor_errors():
    with pytest.raises(TypeError, match="edge_index"):
        AttentionGraph.from_edge_index([[0], [0]], 1)
    with pytest.raises(TypeError, match="edge_index"):
        AttentionGraph.from_edge_index(torch.zeros(2, 1), 1)
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        AttentionGraph.from_edge_index(torch.zeros(3, 1, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="num_nodes=2"):
        AttentionGraph.from_edge_index(torch.tensor([[0], [2]]), 2)
    with pytest.raises(ValueError, match="num_nodes=2"):
        AttentionGraph.from_edge_index(torch.tensor([[-1], [0]]), 2)
    with pytest.raises(ValueError, match="num_nodes >= 0"):
        AttentionGraph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="edge_label"):
        AttentionGraph.from_edge_index(torch.tensor([[0], [0]]), 1, edge_label=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="node_type"):
        AttentionGraph.from_edge_index(torch.tensor([[0], [0]]), 1, node_type=torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="mask"):
        AttentionGraph.from_dense(torch.ones(2, 2))
    with pytest.raises(ValueError, match="square"):
        AttentionGraph.from_dense(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="networkx"):
        AttentionGraph.from_networkx("not a graph")
    G = nx.DiGraph()
    G.add_node(0, type="planet")
    with pytest.raises(ValueError, match="type"):
        AttentionGraph.from_networkx(G)
    with pytest.raises(ValueError, match="stop"):
        rules.band(4, radius=1).query_slice(3, 2)


def test_direct_construction_points_to_the_builders():
    for args in ((), (torch.tensor([[0], [0]]), 1)):
        with pytest.raises(TypeError, match=r"AttentionGraph.from_edge_index\(edge_index, num_nodes\)"):
            AttentionGraph(*args)
