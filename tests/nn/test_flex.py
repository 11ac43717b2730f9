"""The FlexAttention backend (graphattn.nn.flex) on CPU: forward against the float64 dense
reference (torch has no FlexAttention backward on CPU), and its BlockMask against the graph."""

import pytest
import torch
from tests.nn.reference import dense_attention, dense_bias, dense_mask

from graphattn import compose, rules
from graphattn.nn.flex import _FlexTables, flex_graph_attention
from graphattn.nn.plan import build_plan

pytest.importorskip("torch.nn.attention.flex_attention")


def bipartite(nq=30, nk=44):
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(nq, nk, generator=gen) < 0.15
    mask[:, 8:24] = True
    mask[5] = False  # keyless
    key, query = mask.t().nonzero(as_tuple=True)
    ei = torch.stack([key, query])
    return ei[:, torch.argsort(ei[1] * nk + ei[0])], nq, nk, None


def per_head(n=40):
    g = compose.stack_heads([rules.band(n, radius=2), rules.random(n, num_random_keys=3, seed=1)])
    return g.edge_index, n, n, g.head_mask


GRAPHS = {
    "band": lambda: (rules.band(50, radius=5).edge_index, 50, 50, None),
    "bigbird": lambda: (rules.bigbird(64, block_size=8, seed=0).edge_index, 64, 64, None),
    "random": lambda: (rules.random(40, num_random_keys=4, seed=2).edge_index, 40, 40, None),
    "bipartite": bipartite,
    "per-head": per_head,
}


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max()) / float(b.double().abs().max())


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("with_bias", [False, True], ids=["plain", "bias"])
def test_forward_matches_float64_reference(name, with_bias):
    ei, nq, nk, hm = GRAPHS[name]()
    H = 2
    plan = build_plan(ei, nq, nk, head_mask=hm, tile=8)
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(nq, H, 8, generator=gen), torch.randn(nk, H, 8, generator=gen)
    v = torch.randn(nk, H, 6, generator=gen)
    bias = torch.randn(ei.shape[1], H, generator=gen) if with_bias else None
    out, lse = flex_graph_attention(q, k, v, plan, bias=bias, scale=0.4)
    mask = dense_mask(ei, nq, nk) if hm is None else torch.stack([dense_mask(ei[:, hm[:, h]], nq, nk)
                                                                   for h in range(H)])
    ref, _ = dense_attention(q, k, v, mask, None if bias is None else dense_bias(ei, bias, nq, nk), scale=0.4)
    assert out.shape == (nq, H, 6) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    # lse: natural log-sum-exp over each row's edges, -inf (and zero output) without keys.
    s = torch.einsum("ihd,jhd->hij", q.double(), k.double()) * 0.4
    if bias is not None:
        s = s + dense_bias(ei, bias, nq, nk).double()
    s = s.masked_fill(~(mask if mask.dim() == 3 else mask[None]), float("-inf"))
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1).t(), rtol=1e-5, atol=1e-5)
    if name == "bipartite":
        assert torch.all(out[5] == 0) and torch.all(lse[5] == float("-inf"))


@pytest.mark.parametrize("block", [8, 16, 32])
def test_block_mask_lists_the_graph_blocks(block):
    # Flex blocks of 1, 2 or 4 plan tiles: a block is listed iff it holds an edge, and full iff
    # it lies inside the matrix and every cell is an edge.
    n = 70
    g = rules.band(n, radius=9) | rules.random(n, num_random_keys=2, seed=5)
    plan = build_plan(g.edge_index, n, n, tile=8)
    bm = _FlexTables(plan, "cpu", block).block_mask
    dense = dense_mask(g.edge_index, n, n)
    nb = -(-n // block)
    pad = torch.zeros(nb * block, nb * block, dtype=torch.bool)
    pad[:n, :n] = dense
    cells = pad.view(nb, block, nb, block).permute(0, 2, 1, 3).reshape(nb, nb, -1)
    inside = torch.zeros(nb * block, nb * block, dtype=torch.bool)
    inside[:n, :n] = True
    inside = inside.view(nb, block, nb, block).permute(0, 2, 1, 3).reshape(nb, nb, -1).all(-1)
    listed = bm.to_dense()[0, 0].bool()
    assert torch.equal(listed, cells.any(-1))
    full = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(nb):
        full[i, bm.full_kv_indices[0, 0, i, :int(bm.full_kv_num_blocks[0, 0, i])].long()] = True
    assert torch.equal(full, cells.all(-1) & inside)
