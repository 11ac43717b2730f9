"""The tiling plan (graphattn.nn.plan): it covers exactly the graph's edges, and its fast paths
(bincount tile counts, O(E) layout of sorted edge lists, shifts for power-of-two tiles) give the
same plan as the general ones (torch.unique, one sort, division)."""

import pytest
import torch

from graphattn import compose, rules
from graphattn.nn import plan as plan_mod
from graphattn.nn.plan import build_plan


def graphs():
    return {
        "band": (rules.band(301, radius=20), None),
        "bigbird": (rules.bigbird(517, block_size=16, seed=0), None),
        "random": (rules.random(203, num_random_keys=5, seed=1), None),
        "mixed": (rules.band(130, radius=40) | rules.random(130, num_random_keys=3, seed=2), None),
        "star": (rules.star_transformer(37), None),
        "per-head": (compose.stack_heads([rules.band(97, radius=9), rules.random(97, num_random_keys=4, seed=3)]), 2),
        "n1": (rules.full(1), None),
    }


def edges_of(plan):
    """(query, key, edge id) of every edge the plan holds, rebuilt from its masks and CSR."""
    T, out = plan.tile, []
    for g in plan.dense:
        G, Hm, _, CT = g.mask.shape
        cell = g.mask.any(1).reshape(-1).nonzero().flatten()  # union over heads
        gi, rest = cell // (T * CT), cell % (T * CT)
        row, col = rest // CT, rest % CT
        q = g.qblocks[gi] * T + row
        k = g.kblocks[gi, col // T] * T + col % T
        assert torch.equal(torch.sort(cell).values, g.pos)  # pos: the occupied cells, increasing
        out.append(torch.stack([q, k, g.edge_id]))
    if plan.sparse is not None:
        sp = plan.sparse
        q = torch.repeat_interleave(torch.arange(plan.num_queries), sp.crow.diff())
        out.append(torch.stack([q, sp.col, sp.edge_id]))
    return torch.cat(out, 1) if out else torch.zeros(3, 0, dtype=torch.long)


@pytest.mark.parametrize("name", list(graphs()))
@pytest.mark.parametrize("tile", [16, 24, 64])
def test_plan_holds_exactly_the_edges(name, tile):
    g, heads = graphs()[name]
    p = build_plan(g.edge_index, g.num_nodes, g.num_nodes, head_mask=g.head_mask, tile=tile)
    e = edges_of(p)
    assert e.shape[1] == g.num_edges == p.num_edges
    # each edge id once, at its own (query, key)
    assert torch.equal(torch.sort(e[2]).values, torch.arange(g.num_edges))
    assert torch.equal(g.edge_index[1][e[2]], e[0]) and torch.equal(g.edge_index[0][e[2]], e[1])
    if heads is not None:  # per-head masks carry the graph's head_mask
        for grp in p.dense:
            flat = grp.mask.permute(0, 2, 3, 1).reshape(-1, heads)
            assert torch.equal(flat[grp.pos], g.head_mask[grp.edge_id])


def same_plan(a, b, perm=None):
    """Equal plans; ``perm`` maps b's edge ids to a's (b was built from a permuted edge list)."""
    ids = (lambda x: x) if perm is None else (lambda x: perm[x])
    assert (a.num_queries, a.num_keys, a.num_edges, a.tile) == (b.num_queries, b.num_keys, b.num_edges, b.tile)
    assert len(a.dense) == len(b.dense)
    for x, y in zip(a.dense, b.dense):
        for f in ("qblocks", "kblocks", "pos", "mask"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
        assert torch.equal(x.edge_id, ids(y.edge_id))
    assert (a.sparse is None) == (b.sparse is None)
    if a.sparse is not None:
        for f in ("crow", "col", "t_crow", "t_col", "t_perm", "head_allowed"):
            assert torch.equal(getattr(a.sparse, f), getattr(b.sparse, f)), f
        assert torch.equal(a.sparse.edge_id, ids(b.sparse.edge_id))


@pytest.mark.parametrize("name", list(graphs()))
@pytest.mark.parametrize("tile", [16, 24])
def test_unsorted_edges_take_the_sort_path_to_the_same_plan(name, tile):
    g, _ = graphs()[name]
    perm = torch.randperm(g.num_edges, generator=torch.Generator().manual_seed(0))
    a = build_plan(g.edge_index, g.num_nodes, g.num_nodes, head_mask=g.head_mask, tile=tile)
    hm = None if g.head_mask is None else g.head_mask[perm]
    b = build_plan(g.edge_index[:, perm], g.num_nodes, g.num_nodes, head_mask=hm, tile=tile)
    same_plan(a, b, perm)


@pytest.mark.parametrize("QB, KB, E, span", [(7, 9, 1000, None), (1 << 6, 1 << 6, 10, None),
                                             (1 << 11, 1 << 11, 300, 4), (1 << 15, 1 << 15, 500, 3),
                                             (1 << 15, 1 << 15, 500, None)])
def test_tile_counts_match_unique_on_every_path(QB, KB, E, span):
    # full grid, per-block spans (band-like: span key blocks per query block), and torch.unique
    gen = torch.Generator().manual_seed(0)
    qb = torch.randint(0, QB, (E,), generator=gen)
    if span is None:
        kb = torch.randint(0, KB, (E,), generator=gen)
    else:
        kb = (qb + torch.randint(-span, span + 1, (E,), generator=gen)).clamp(0, KB - 1)
    got = plan_mod._tile_counts(qb, kb, QB, KB)
    want = torch.unique(qb * KB + kb, return_inverse=True, return_counts=True)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


def test_bipartite_plan_holds_exactly_the_edges():
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(50, 77, generator=gen) < 0.2
    mask[:, 30:45] = True
    key, query = mask.t().nonzero(as_tuple=True)
    ei = torch.stack([key, query])
    order = torch.argsort(ei[1] * 77 + ei[0])
    for edge_index in (ei[:, order], ei):  # sorted and unsorted
        p = build_plan(edge_index, 50, 77, tile=16)
        e = edges_of(p)
        assert torch.equal(torch.sort(e[2]).values, torch.arange(ei.shape[1]))
        assert torch.equal(edge_index[1][e[2]], e[0]) and torch.equal(edge_index[0][e[2]], e[1])
    same_plan(build_plan(ei[:, order], 50, 77, tile=16), build_plan(ei, 50, 77, tile=16), torch.argsort(order))
