"""Attention that composes: graph_attention's differentiable log-sum-exp, merge_attention, edge
lists with repeated edges (PyG multigraphs) and per-head masks on the edge_index path.

Oracles: float64 dense masked softmax and ``torch.logsumexp`` (graphattn.nn.reference), PyG's
``TransformerConv``, the coalesced graph with a log-multiplicity bias.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import AttentionGraph, compose, rules
from graphattn.nn import graph_attention, merge_attention
from graphattn.nn.reference import dense_attention, dense_bias, dense_mask

PLANS = {"mixed": dict(tile=16, dense_threshold=0.25), "dense": dict(tile=8, dense_threshold=0.0),
         "sparse": dict(tile=16, dense_threshold=1.0)}


def graphs():
    ei = rules.erdos_renyi(61, p=0.1, seed=3).without_self_loops()
    return {
        "band": rules.band(97, radius=9),
        "bigbird": rules.bigbird(130, block_size=8, seed=0),
        "random": rules.random(83, num_random_keys=5, seed=1),
        "longformer-heads": rules.longformer(70, radius=3, dilation=[1, 3], global_indices=[0]),
        "keyless": ei,  # rows without keys
        "etc": rules.etc(40, num_global=2, radius=3).without_relative(),
    }


def inputs(nq, nk, H=2, D=8, Dv=6, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=dtype).requires_grad_(True) for s in ((nq, H, D), (nk, H, D), (nk, H, Dv))]


def reference(q, k, v, mask, bias_dense=None):
    """float64 (out, lse) of the dense masked softmax; lse = -inf on rows without keys."""
    out, _ = dense_attention(q, k, v, mask, bias_dense)
    s = torch.einsum("ihd,jhd->hij", q.double(), k.double()) * q.shape[-1] ** -0.5
    if bias_dense is not None:
        s = s + bias_dense
    m = mask if mask.dim() == 3 else mask[None].expand_as(s)
    return out, torch.logsumexp(s.masked_fill(~m, float("-inf")), -1).t()


def graph_mask(g: AttentionGraph, H: int):
    if g.head_mask is None:
        return g.to_dense()
    return torch.stack([dense_mask(g.edge_index[:, g.head_mask[:, h]], g.num_nodes, g.num_nodes) for h in range(H)])


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


@pytest.mark.parametrize("name", list(graphs()))
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("with_bias", [False, True], ids=["", "bias"])
def test_lse_and_its_gradient_match_float64_logsumexp(name, plan, with_bias):
    g = graphs()[name]
    n, H = g.num_nodes, 2
    q, k, v = inputs(n, n)
    bias = torch.randn(g.num_edges, H, generator=torch.Generator().manual_seed(2)).requires_grad_(True) if with_bias else None
    out, lse = graph_attention(q, k, v, g, bias=bias, return_lse=True, **PLANS[plan])
    assert lse.shape == (n, H) and lse.dtype == torch.float32
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    bd = None if bias is None else bias.detach().double().requires_grad_(True)
    ref, ref_lse = reference(*leaves, graph_mask(g, H), None if bd is None else dense_bias(g.edge_index, bd, n, n))
    keyless = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), keyless) and bool((lse[keyless] < 0).all())
    assert rel(lse[~keyless], ref_lse[~keyless]) < 1e-6
    assert rel(out, ref) < 1e-5
    gen = torch.Generator().manual_seed(4)
    go, gl = torch.randn(ref.shape, generator=gen, dtype=torch.float64), torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64)
    gl = gl.masked_fill(keyless, 0.0)
    wrt_ref = leaves + ([] if bd is None else [bd])
    ref_grads = torch.autograd.grad((ref * go).sum() + (ref_lse.masked_fill(keyless, 0) * gl).sum(), wrt_ref)
    wrt = [q, k, v] + ([] if bias is None else [bias])
    grads = torch.autograd.grad((out * go.float()).sum() + (lse.masked_fill(keyless, 0) * gl.float()).sum(), wrt)
    for a, b in zip(grads, ref_grads):
        assert torch.isfinite(a).all() and rel(a, b) < 2e-5


def test_lse_alone_is_differentiable_and_float64_stays_float64():
    g = rules.band(40, radius=4)
    q, k, v = inputs(40, 40, dtype=torch.float64)
    _, lse = graph_attention(q, k, v, g, return_lse=True)
    assert lse.dtype == torch.float64
    dq, dk, dv = torch.autograd.grad(lse.sum(), (q, k, v), allow_unused=True)
    assert float(dv.abs().max()) == 0.0  # lse does not depend on the values
    _, ref_lse = reference(*(t.detach().requires_grad_(True) for t in (q, k, v)), g.to_dense())
    qd, kd = (t.detach().requires_grad_(True) for t in (q, k))
    s = torch.einsum("ihd,jhd->hij", qd, kd) * 8 ** -0.5
    ref = torch.autograd.grad(torch.logsumexp(s.masked_fill(~g.to_dense()[None], float("-inf")), -1).sum(), (qd, kd))
    assert rel(dq, ref[0]) < 1e-12 and rel(dk, ref[1]) < 1e-12


# ------------------------------------------------------------------------------------- merge


@st.composite
def split_graphs(draw):
    nq = draw(st.integers(1, 30))
    nk = draw(st.integers(1, 30))
    density = draw(st.floats(0.0, 1.0))
    parts = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(nq, nk, generator=gen) < density
    query, key = mask.nonzero(as_tuple=True)
    ei = torch.stack([key, query])
    assign = torch.randint(0, parts, (ei.shape[1],), generator=gen)
    return nq, nk, ei, [ei[:, assign == p] for p in range(parts)], seed


@settings(max_examples=25, deadline=None)
@given(split_graphs())
def test_merge_of_any_split_is_the_whole_graph(case):
    nq, nk, ei, parts, seed = case
    q, k, v = inputs(nq, nk, seed=seed, dtype=torch.float64)
    whole, whole_lse = graph_attention(q, k, v, ei, return_lse=True, tile=8)
    outs, lses = zip(*(graph_attention(q, k, v, p, return_lse=True, tile=8) for p in parts))
    out, lse = merge_attention(outs, lses)
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(whole_lse))
    torch.testing.assert_close(lse[~torch.isinf(lse)], whole_lse[~torch.isinf(lse)], rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    gl = torch.randn(lse.shape, generator=gen, dtype=torch.float64).masked_fill(torch.isinf(lse), 0.0)
    a = torch.autograd.grad((out * go).sum() + (lse.masked_fill(torch.isinf(lse), 0) * gl).sum(), (q, k, v))
    b = torch.autograd.grad((whole * go).sum() + (whole_lse.masked_fill(torch.isinf(whole_lse), 0) * gl).sum(), (q, k, v))
    for x, y in zip(a, b):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_merge_keyless_parts_and_errors():
    out = torch.randn(3, 2, 4)
    lse = torch.tensor([[0.5, float("-inf")], [float("-inf"), float("-inf")], [1.0, 2.0]])
    empty_out, empty_lse = torch.zeros(3, 2, 4), torch.full((3, 2), float("-inf"))
    o, l = merge_attention([out, empty_out], [lse, empty_lse])
    assert torch.equal(o[0, 0], out[0, 0]) and torch.equal(o[1], torch.zeros(2, 4)) and torch.equal(l, lse)
    lse_r = lse.clone().requires_grad_(True)
    o, l = merge_attention([out, empty_out], [lse_r, empty_lse])
    (g,) = torch.autograd.grad(o.sum() + l.masked_fill(torch.isinf(l), 0).sum(), lse_r)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="as many outs as lses"):
        merge_attention([out], [])
    with pytest.raises(ValueError, match=r"lses\[0\] \[Nq, H\]"):
        merge_attention([out], [lse[:2]])
    with pytest.raises(TypeError, match="tensors"):
        merge_attention([out], [None])


# ------------------------------------------------------------------------------- multigraphs


def multigraph(nq=23, nk=31, E=140, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, nk, (E,), generator=gen), torch.randint(0, nq, (E,), generator=gen)])
    return torch.cat([ei, ei[:, :30], ei[:, :10]], dim=1)  # some edges twice, some three times


def test_repeated_edges_equal_the_coalesced_graph_with_log_multiplicity_bias():
    ei = multigraph()
    q, k, v = inputs(23, 31, dtype=torch.float64)
    bias = torch.randn(ei.shape[1], 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                       requires_grad=True)
    out, lse, w = graph_attention(q, k, v, ei, bias=bias, return_lse=True, return_attention_weights=True)
    # Oracle: the dense softmax where each copy is its own term: sum of exp(bias) per cell.
    bias_d = torch.full((2, 23, 31), float("-inf"), dtype=torch.float64)
    cells = torch.zeros(2, 23, 31, dtype=torch.float64).index_put(
        (torch.arange(2)[:, None], ei[1][None], ei[0][None]), bias.detach().exp().t(), accumulate=True)
    mask = cells > 0
    bias_d[mask] = cells[mask].log()
    ref, ref_lse = reference(q.detach(), k.detach(), v.detach(), mask, torch.where(mask, bias_d, torch.zeros_like(bias_d)))
    torch.testing.assert_close(out.detach(), ref, rtol=1e-12, atol=1e-12)
    has = ~torch.isinf(ref_lse)
    torch.testing.assert_close(lse.detach()[has], ref_lse[has], rtol=1e-12, atol=1e-12)
    # Each copy is one message: weights per listed edge sum to 1 per (query, head).
    sums = torch.zeros(23, 2, dtype=torch.float64).index_add_(0, ei[1], w)
    torch.testing.assert_close(sums[has[:, 0]], torch.ones_like(sums[has[:, 0]]))
    # Without a bias: the coalesced graph with a log(count) bias, gradients included.
    out = graph_attention(q, k, v, ei)
    code = ei[1] * 31 + ei[0]
    uniq, inv, counts = torch.unique(code, return_inverse=True, return_counts=True)
    cei = torch.stack([uniq % 31, uniq // 31])
    ref = graph_attention(q, k, v, cei, bias=counts.double().log()[:, None].expand(-1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    # The bias gradient reaches every copy: d out / d bias_e, against autograd of the oracle.
    (gb,) = torch.autograd.grad(graph_attention(q, k, v, ei, bias=bias), bias, go)
    bias2 = bias.detach().clone().requires_grad_(True)
    cells = torch.zeros(2, 23, 31, dtype=torch.float64).index_put(
        (torch.arange(2)[:, None], ei[1][None], ei[0][None]), bias2.exp().t(), accumulate=True)
    bd = torch.where(mask, cells.clamp_min(1e-300).log(), torch.zeros_like(cells))
    ref_b, _ = dense_attention(q.detach(), k.detach(), v.detach(), mask, bd)
    (gb_ref,) = torch.autograd.grad(ref_b, bias2, go)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-10, atol=1e-12)


def test_repeated_edges_equal_pyg_transformer_conv():
    from torch_geometric.nn import TransformerConv

    from graphattn.nn import GraphAttention

    torch.manual_seed(0)
    n, E_dim, H = 19, 16, 2
    ei = multigraph(n, n, 60, seed=2)
    conv = TransformerConv(E_dim, E_dim // H, heads=H, root_weight=False, bias=True).double()
    layer = GraphAttention(E_dim, H).double()
    with torch.no_grad():  # the same projections; TransformerConv has no output projection
        layer.q_proj.load_state_dict(conv.lin_query.state_dict())
        layer.k_proj.load_state_dict(conv.lin_key.state_dict())
        layer.v_proj.load_state_dict(conv.lin_value.state_dict())
        layer.out_proj.weight.copy_(torch.eye(E_dim, dtype=torch.float64))
        layer.out_proj.bias.zero_()
    x = torch.randn(n, E_dim, dtype=torch.float64, requires_grad=True)
    ours = layer(x, ei)
    theirs = conv(x, ei)
    # TransformerConv leaves a node without incoming edges at zero, as graph_attention does.
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, go)[0], torch.autograd.grad(theirs, x, go)[0],
                               rtol=1e-10, atol=1e-10)


def test_multigraph_in_torch_geometric_sequential():
    from torch_geometric.nn import Sequential

    from graphattn.nn import GraphAttention

    model = Sequential("x, edge_index", [(GraphAttention(8, 2), "x, edge_index -> x"), torch.nn.ReLU()])
    ei = torch.randint(0, 12, (2, 50), generator=torch.Generator().manual_seed(0))
    assert model(torch.randn(12, 8), ei).shape == (12, 8)


# --------------------------------------------------------------------------- head_mask argument


@pytest.mark.parametrize("repeat", [False, True], ids=["unique", "repeated"])
def test_head_mask_on_an_edge_index_equals_the_per_head_graph(repeat):
    g = compose.stack_heads([rules.band(50, radius=3), rules.dilated(50, radius=2, dilation=4)
                             | rules.random(50, num_random_keys=3, seed=1)])
    q, k, v = inputs(50, 50, dtype=torch.float64)
    ref = graph_attention(q, k, v, g, tile=16)
    ei, hm = g.edge_index, g.head_mask
    if repeat:  # a copy serving only head 0 adds one message for head 0 only
        ei = torch.cat([ei, ei[:, :7]], dim=1)
        extra = torch.zeros(7, 2, dtype=torch.bool)
        extra[:, 0] = True
        hm = torch.cat([hm, hm[:7] & extra], dim=0)
        counts = torch.ones(g.num_edges, 2, dtype=torch.float64)
        counts[:7] += (g.head_mask[:7] & extra).double()
        ref = graph_attention(q, k, v, g, bias=counts.log(), tile=16)
    perm = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(3))  # unsorted too
    out = graph_attention(q, k, v, ei[:, perm], head_mask=hm[perm], tile=16)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_layer_takes_a_head_mask_with_an_edge_index():
    from graphattn.nn import GraphAttention

    g = compose.stack_heads([rules.band(30, radius=2), rules.random(30, num_random_keys=4, seed=2)])
    layer = GraphAttention(8, 2).double()
    x = torch.randn(3, 30, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x, g.edge_index, head_mask=g.head_mask), layer(x, g), rtol=1e-12, atol=1e-12)
