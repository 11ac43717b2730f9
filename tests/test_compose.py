import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from graphattn import AttentionGraph, EdgeLabel, NodeType, compose, rules


def graph_from(mask):
    return AttentionGraph.from_dense(mask)


masks = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n * n, max_size=n * n),
        st.lists(st.booleans(), min_size=n * n, max_size=n * n),
    ).map(lambda ab: (torch.tensor(ab[0]).view(n, n), torch.tensor(ab[1]).view(n, n)))
)


@given(masks)
def test_set_algebra_matches_dense_boolean_algebra(ab):
    a, b = ab
    g, h = graph_from(a), graph_from(b)
    assert torch.equal((g | h).to_dense(), a | b)
    assert torch.equal((g & h).to_dense(), a & b)
    assert torch.equal((g - h).to_dense(), a & ~b)
    for out in (g | h, g & h, g - h):
        code = out.edge_index[1] * out.num_nodes + out.edge_index[0]
        assert bool((code[1:] > code[:-1]).all())  # sorted and unique


@given(st.integers(1, 40), st.integers(0, 5), st.integers(1, 4), st.integers(0, 10))
def test_rule_unions_match_dense(n, r, d, seed):
    a = rules.band(n, radius=r)
    b = rules.dilated(n, radius=r, dilation=d)
    c = rules.random(n, num_random_keys=min(2, n - 1), seed=seed)
    u = compose.union(a, b, c)
    assert torch.equal(u.to_dense(), a.to_dense() | b.to_dense() | c.to_dense())
    assert torch.equal((u - a).to_dense(), u.to_dense() & ~a.to_dense())


def test_union_keeps_left_labels():
    a, b = rules.band(6, radius=1), rules.global_tokens(6, global_indices=[0])
    u = a | b
    lab = {tuple(e): int(l) for e, l in zip(u.edge_index.t().tolist(), u.edge_label.tolist())}
    assert lab[(1, 0)] == EdgeLabel.BAND  # in both: left wins
    assert lab[(5, 0)] == EdgeLabel.GLOBAL  # only in the global graph
    u2 = b | a
    lab2 = {tuple(e): int(l) for e, l in zip(u2.edge_index.t().tolist(), u2.edge_label.tolist())}
    assert lab2[(1, 0)] == EdgeLabel.GLOBAL


def test_operands_must_share_nodes():
    with pytest.raises(ValueError, match="same nodes"):
        rules.band(4, radius=1) | rules.band(5, radius=1)
    with pytest.raises(ValueError, match="node types"):
        rules.global_nodes(3, num_global=1) | rules.band(4, radius=1)
    with pytest.raises(TypeError, match="AttentionGraph"):
        compose.union(rules.band(3, radius=1), "x")
    with pytest.raises(ValueError, match="relative"):
        rules.etc(4, num_global=1, radius=1) | rules.global_nodes(4, num_global=1)


def test_add_nodes_aligns_graphs():
    g = rules.band(4, radius=1).add_nodes(2, node_type=NodeType.GLOBAL) | rules.global_nodes(4, num_global=2)
    assert g.num_nodes == 6 and g.num_tokens == 4


@pytest.mark.parametrize("n,block", [(1, 1), (5, 2), (7, 3), (8, 4), (3, 8), (0, 2)])
def test_lift_blocks_matches_kronecker_oracle(n, block):
    nb = -(-n // block)
    bg = rules.erdos_renyi(nb, p=0.5, seed=n) if nb else rules.full(0)
    lifted = compose.lift_blocks(bg, block_size=block, num_tokens=n)
    ref = torch.zeros(n, n, dtype=torch.bool)
    dense = bg.to_dense()
    for i in range(n):
        for j in range(n):
            ref[i, j] = dense[i // block, j // block]
    assert torch.equal(lifted.to_dense(), ref)


def test_lift_blocks_many_runs_and_queries():
    # An irregular block graph (many different row lengths) takes the flat-gather path.
    bg = rules.erdos_renyi(150, p=0.1, seed=3)
    lifted = compose.lift_blocks(bg, block_size=3, num_tokens=449)
    ref = bg.to_dense().repeat_interleave(3, 0).repeat_interleave(3, 1)[:449, :449]
    assert torch.equal(lifted.to_dense(), ref)
    part = compose.lift_blocks(bg, block_size=3, num_tokens=449, queries=range(10, 200))
    assert part.equals(lifted.query_slice(10, 200))


def test_lift_blocks_carries_labels_and_heads():
    bg = compose.stack_heads([rules.band(4, radius=0), rules.band(4, radius=1)])
    lifted = compose.lift_blocks(bg, block_size=2, num_tokens=7)
    per_head = [compose.lift_blocks(rules.band(4, radius=r), block_size=2, num_tokens=7) for r in (0, 1)]
    for h in range(2):
        sel = lifted._select(lifted.head_mask[:, h])
        assert torch.equal(sel.to_dense(), per_head[h].to_dense())
    with pytest.raises(ValueError, match="ceil"):
        compose.lift_blocks(rules.band(3, radius=0), block_size=2, num_tokens=7)


def test_batch_offsets_and_no_cross_edges():
    gs = [rules.band(3, radius=1), rules.star_transformer(4), rules.global_nodes(2, num_global=1)]
    b, ptr = compose.batch(gs)
    assert ptr.tolist() == [0, 3, 12, 15]
    assert b.num_nodes == 15
    dense = b.to_dense()
    for k, g in enumerate(gs):
        lo, hi = int(ptr[k]), int(ptr[k + 1])
        assert torch.equal(dense[lo:hi, lo:hi], g.to_dense())
        assert not dense[lo:hi, :lo].any() and not dense[lo:hi, hi:].any()
    assert b.num_tokens == 3 + 4 + 2


def test_stack_heads_and_head_algebra():
    gs = [rules.band(6, radius=1), rules.dilated(6, radius=1, dilation=2)]
    s = compose.stack_heads(gs)
    assert s.num_heads == 2
    for h, g in enumerate(gs):
        assert torch.equal(s._select(s.head_mask[:, h]).to_dense(), g.to_dense())
    # union with a head-less graph: its edges serve every head
    u = s | rules.global_tokens(6, global_indices=[0])
    assert u.head_mask[(u.edge_index[1] == 0)].all()
    # difference per head
    d = s - compose.stack_heads([rules.band(6, radius=0), rules.band(6, radius=0)])
    assert d.num_edges > 0 and not (d.edge_index[0] == d.edge_index[1]).any()
    i = s & rules.band(6, radius=0)
    assert (i.edge_index[0] == i.edge_index[1]).all()
    with pytest.raises(ValueError, match="heads"):
        s | compose.stack_heads([rules.band(6, radius=1)] * 3)


def test_schedule_validates():
    sch = compose.schedule([rules.band(8, radius=1), rules.dilated(8, radius=1, dilation=2)])
    assert isinstance(sch, tuple) and len(sch) == 2
    with pytest.raises(ValueError, match="same nodes"):
        compose.schedule([rules.band(8, radius=1), rules.band(9, radius=1)])
    with pytest.raises(ValueError, match="at least one"):
        compose.schedule([])


def _union_oracle(graphs):
    """Per edge: the label and relative id of the first operand that holds it, heads OR-ed."""
    out = {}
    heads = next((g.num_heads for g in graphs if g.num_heads is not None), None)
    for g in graphs:
        rel = g.relative.tolist() if g.relative is not None else [None] * g.num_edges
        hm = (g.head_mask.tolist() if g.head_mask is not None
              else [[True] * (heads or 0)] * g.num_edges)
        for e, (k, q) in enumerate(g.edge_index.t().tolist()):
            if (q, k) not in out:
                out[(q, k)] = [int(g.edge_label[e]), rel[e], list(hm[e])]
            else:
                out[(q, k)][2] = [a or b for a, b in zip(out[(q, k)][2], hm[e])]
    return sorted(out.items())


def _random_labelled(n, num_edges, seed, *, heads=None, relative=False):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, num_edges), generator=gen)
    label = torch.randint(0, 14, (num_edges,), generator=gen, dtype=torch.int64)
    rel = torch.randint(0, 5, (num_edges,), generator=gen) if relative else None
    hm = torch.rand(num_edges, heads, generator=gen) < 0.6 if heads else None
    return AttentionGraph.from_edge_index(ei, n, edge_label=label, relative=rel, head_mask=hm)


@given(st.integers(1, 9), st.lists(st.integers(0, 40), min_size=1, max_size=5), st.integers(0, 99),
       st.booleans(), st.sampled_from([None, 1, 3]))
def test_many_operand_union_matches_dict_oracle(n, sizes, seed, relative, heads):
    # Operands of every size order, so the largest (the merge's base) sits anywhere in the list;
    # some operands carry a head layout and some do not.
    gs = [_random_labelled(n, e, seed + p, heads=heads if p % 2 == 0 else None, relative=relative)
          for p, e in enumerate(sizes)]
    u = compose.union(*gs)
    got = [((q, k), [int(lab), None if u.relative is None else int(r),
                     [] if u.head_mask is None else u.head_mask[e].tolist()])
           for e, ((k, q), lab, r) in enumerate(zip(u.edge_index.t().tolist(), u.edge_label,
                                                  u.relative if u.relative is not None else [None] * u.num_edges))]
    assert got == _union_oracle(gs)
    assert u.equals(AttentionGraph.from_edge_index(u.edge_index, n, edge_label=u.edge_label,
                                                   relative=u.relative, head_mask=u.head_mask))


def test_union_of_one_graph_is_that_graph():
    g = rules.band(5, radius=1)
    assert compose.union(g) is g
    with pytest.raises(ValueError, match="at least one"):
        compose.union()


def test_set_algebra_lives_with_the_graph_type():
    # compose re-exports the graph module's functions; neither the graph module nor the edge-set
    # kernels it uses import compose (no cycle between the core type and its compositions).
    import ast
    import inspect

    from graphattn import _edge_sets, graph

    assert compose.union is graph.union and compose.intersection is graph.intersection
    assert compose.difference is graph.difference
    for module in (graph, _edge_sets):
        imported = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        assert "graphattn.compose" not in imported, module.__name__
        assert "graphattn.graph" not in imported or module is graph, module.__name__
