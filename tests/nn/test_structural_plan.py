"""Plans from a graph's structure (band, lifted block graphs, a band with global tokens) against
the plan of its edge list: the same tiles with the same masks and the same CSR part (edge ids
included); attention through them equals the edge list's; nothing reads the edges on the way."""

import pytest
import torch

from graphattn import compose, rules
from graphattn.nn import graph_attention
from graphattn.nn.plan import build_plan, get_plan, structural_plan


def tiles(plan):
    """{(query block, key block): bool [T, T]} of a plan's dense tiles."""
    T, out = plan.tile, {}
    for g in plan.dense:
        G, c = g.kblocks.shape
        mask = g.mask.reshape(G, -1, T, c, T)[:, 0]
        for gi in range(G):
            for s in range(c):
                out[(int(g.qblocks[gi]), int(g.kblocks[gi, s]))] = mask[gi, :, s]
    return out


def same_plan(a, b):
    ta, tb = tiles(a), tiles(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert a.num_edges == b.num_edges == a.dense_edges + a.sparse_edges
    assert (a.sparse is None) == (b.sparse is None)
    if a.sparse is not None:
        for name in ("crow", "col", "edge_id", "t_crow", "t_col", "t_perm"):
            assert torch.equal(getattr(a.sparse, name), getattr(b.sparse, name)), name


CASES = {
    "band": lambda q: rules.band(1000, radius=128, queries=q),
    "band-r64-tile-boundary": lambda q: rules.band(1024, radius=64, queries=q),
    "band-wider-than-n": lambda q: rules.band(150, radius=400, queries=q),
    "band-causal": lambda q: rules.band(777, radius=128, causal=True, queries=q),
    "bigbird": lambda q: rules.bigbird(1000, block_size=64, seed=0, queries=q),
    "bigbird-128-blocks": lambda q: rules.bigbird(1500, block_size=128, seed=3, queries=q),
    "bigbird-exact-multiple": lambda q: rules.bigbird(64 * 20, block_size=64, seed=1, queries=q),
    "block-local": lambda q: rules.block_local(700, block_size=64, queries=q),
    "longformer-cls": lambda q: rules.longformer(1000, radius=128, global_indices=[0], queries=q),
    "longformer-globals": lambda q: rules.longformer(1000, radius=128, global_indices=[0, 500, 999], queries=q),
    "longformer-spread": lambda q: rules.longformer(1000, radius=128, global_indices=range(0, 1000, 50), queries=q),
    "longformer-last-row": lambda q: rules.longformer(1024, radius=64, global_indices=[1023], queries=q),
    "longformer-wider-than-n": lambda q: rules.longformer(150, radius=400, global_indices=[7], queries=q),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("ranged", [False, True], ids=["all", "range"])
def test_structural_plan_equals_the_edge_list_plan(name, ranged):
    g = CASES[name](None)
    if ranged:  # a shard's rows: cut mid-block at both ends (most of each cut block kept)
        n = g.num_nodes
        g = CASES[name](range(min(130, n // 2), max(n // 2, (n // 64 - 2) * 64 + 61)))
    assert g.structure is not None
    plan = structural_plan(g.structure, tile=64)
    assert g.structure is not None  # planning read no edges
    if plan is None:
        pytest.skip("left to the edge list (a tile below the dense threshold)")
    same_plan(plan, build_plan(g.edge_index, g.num_nodes, g.num_nodes, tile=64))


def test_what_has_no_structural_plan_takes_the_edge_list():
    assert structural_plan(rules.band(500, radius=2).structure, tile=64) is None  # sparse diagonal tiles
    assert structural_plan(rules.band(1000, radius=100).structure, tile=64) is None  # sparse window ends
    assert structural_plan(rules.dilated(500, radius=8, dilation=3).structure, tile=64) is None
    assert structural_plan(rules.bigbird(500, block_size=16, seed=0).structure, tile=64) is None
    per_head = compose.lift_blocks(compose.stack_heads([rules.band(8, radius=1), rules.band(8, radius=0)]),
                                   block_size=64, num_tokens=500)
    assert structural_plan(per_head.structure, tile=64) is None
    # 20 global columns in one key tile make its tiles dense: the edge list decides
    assert structural_plan(rules.longformer(1000, radius=128, global_indices=range(20)).structure, tile=64) is None
    g = rules.band(500, radius=2)
    graph_attention(*(torch.randn(500, 1, 8) for _ in range(3)), g)
    assert g.structure is None  # its plan needed the edges


@pytest.mark.parametrize("name", ["band", "bigbird", "band-causal", "longformer-globals"])
def test_attention_on_the_structure_equals_the_edge_list(name):
    g = CASES[name](None)
    n = g.num_nodes
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 2, 16, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = graph_attention(q, k, v, g)
    assert g.structure is not None  # no edge list was built
    ref = graph_attention(q, k, v, g.edge_index)  # the edge list's own plan
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # A bias needs every edge's position: the edge-list plan is built then.
    bias = torch.zeros(g.num_edges, 2, dtype=torch.float64)
    torch.testing.assert_close(graph_attention(q, k, v, g, bias=bias), ref, rtol=1e-12, atol=1e-12)
    assert get_plan(g, n, n).has_edge_maps


def test_counts_slices_and_moves_need_no_edges():
    g = rules.bigbird(5000, block_size=64, seed=0)
    assert g.num_edges == int(g.keys_per_query().sum())
    s = g.query_slice(1000, 2100)
    assert s.structure is not None and g.structure is not None
    assert s.equals(g.query_slice(1000, 2100)) and s.equals(rules.bigbird(5000, block_size=64, seed=0).query_slice(1000, 2100))
    assert g.to("cpu").structure is not None
    b = rules.band(10**9, radius=10**4)  # a structure: nothing is allocated ...
    assert b.num_edges == 10**9 * 20001 - 10**4 * (10**4 + 1)
    from graphattn._memory import MemoryBudgetError, memory_limit

    with memory_limit("1G"), pytest.raises(MemoryBudgetError, match="edges of a window graph"):
        b.edge_index  # ... until the edges are read
