import pytest
import torch
from tests.nn.reference import dense_attention, dense_bias, dense_mask

from graphattn import compose, rules
from graphattn.nn import graph_attention
from graphattn.nn._engine import GraphAttentionFunction
from graphattn.nn.plan import build_plan

PLANS = [dict(tile=16, dense_threshold=0.25), dict(tile=64), dict(tile=8, dense_threshold=0.0),
         dict(tile=16, dense_threshold=1.0)]  # mixed, default, all dense, (nearly) all sparse


def graphs():
    return {
        "band": rules.band(301, radius=20),
        "random": rules.random(203, num_random_keys=5, seed=1),
        "bigbird": rules.bigbird(517, block_size=16, seed=0),
        "mixed": rules.band(130, radius=40).without_self_loops() | rules.random(130, num_random_keys=3, seed=2),
        "star": rules.star_transformer(37),  # embedding nodes have no keys
        "bpt": rules.bp_transformer(45, k=2),
        "n1": rules.full(1),
        "erdos": rules.erdos_renyi(97, p=0.08, seed=3).without_self_loops(),  # may leave keyless rows
    }


def inputs(nq, nk, H=3, D=8, Dv=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=dtype).requires_grad_(True)  # noqa: E731
    return mk(nq, H, D), mk(nk, H, D), mk(nk, H, Dv)


def check_against_reference(q, k, v, edge_index, nq, nk, graph, bias=None, **opts):
    out = graph_attention(q, k, v, graph, bias=bias, **opts)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    bd = None if bias is None else bias.detach().double().requires_grad_(True)
    ref, _ = dense_attention(qd, kd, vd, dense_mask(edge_index, nq, nk),
                             None if bd is None else dense_bias(edge_index, bd, nq, nk))
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(ref)
    ref.backward(go)
    wrt = (q, k, v) + (() if bias is None else (bias,))
    grads = torch.autograd.grad(out, wrt, go.to(out.dtype))
    for g, r in zip(grads, (qd, kd, vd) + (() if bd is None else (bd,))):
        # relative to the gradient's magnitude, plus fp32 round-off where it is exactly zero
        err = float((g.double() - r.grad).abs().max())
        assert err < 1e-5 * float(r.grad.abs().max()) + 1e-6


@pytest.mark.parametrize("name", list(graphs()))
@pytest.mark.parametrize("opts", PLANS, ids=["mixed", "default", "dense", "sparse"])
def test_matches_dense_reference(name, opts):
    g = graphs()[name]
    q, k, v = inputs(g.num_nodes, g.num_nodes)
    gen = torch.Generator().manual_seed(5)
    bias = torch.randn(g.num_edges, 3, generator=gen).requires_grad_(True)
    check_against_reference(q, k, v, g.edge_index, g.num_nodes, g.num_nodes, g, **opts)
    check_against_reference(q, k, v, g.edge_index, g.num_nodes, g.num_nodes, g, bias=bias, **opts)


@pytest.mark.parametrize("opts", PLANS[:3], ids=["mixed", "default", "dense"])
def test_bipartite_cross_attention(opts):
    nq, nk = 70, 123
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(nq, nk, generator=gen) < 0.2
    mask[:, 40:72] |= True  # a dense stripe so the tiles path runs too
    mask[3] = False  # a query with no keys
    key, query = mask.t().nonzero(as_tuple=True)
    ei = torch.stack([key, query])
    ei = ei[:, torch.argsort(ei[1] * nk + ei[0])]
    q, k, v = inputs(nq, nk)
    check_against_reference(q, k, v, ei, nq, nk, ei, **opts)
    out = graph_attention(q, k, v, ei, **opts)
    assert torch.all(out[3] == 0)


def test_keyless_queries_are_zero_with_finite_gradients():
    g = rules.star_transformer(6)  # embedding nodes 6..11 attend nothing
    q, k, v = inputs(g.num_nodes, g.num_nodes)
    out = graph_attention(q, k, v, g)
    assert torch.all(out[6:12] == 0) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    empty = torch.empty(2, 0, dtype=torch.long)
    assert torch.all(graph_attention(q, k, v, empty) == 0)


def test_return_weights_match_dense_softmax():
    g = rules.bigbird(200, block_size=8, seed=1)
    q, k, v = inputs(200, 200)
    out, w = graph_attention(q, k, v, g, return_attention_weights=True)
    _, p = dense_attention(q, k, v, g.to_dense())
    ref = p[:, g.edge_index[1], g.edge_index[0]].t()
    torch.testing.assert_close(w.double(), ref, rtol=1e-5, atol=1e-6)
    sums = torch.zeros(200, 3, dtype=torch.float64).index_add_(0, g.edge_index[1], w.double())
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=1e-5, atol=1e-6)  # fp32 weights


def test_per_head_layout_matches_separate_heads():
    heads = [rules.band(90, radius=3), rules.dilated(90, radius=3, dilation=4), rules.random(90, num_random_keys=6, seed=0)]
    g = compose.stack_heads(heads)
    q, k, v = inputs(90, 90)
    out, w = graph_attention(q, k, v, g, return_attention_weights=True)
    for h, gh in enumerate(heads):
        ref = graph_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], gh)
        torch.testing.assert_close(out[:, h], ref[:, 0], rtol=1e-5, atol=1e-6)
    assert torch.all(w[~g.head_mask] == 0)
    mask = torch.stack([gh.to_dense() for gh in heads])
    ref, _ = dense_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_dense_and_sparse_paths():
    g = rules.band(11, radius=2) | rules.random(11, num_random_keys=2, seed=0)
    for opts in (dict(tile=4, dense_threshold=0.3), dict(tile=4, dense_threshold=1.0)):
        q, k, v = inputs(11, 11, H=2, D=3, Dv=2, dtype=torch.float64)
        bias = torch.randn(g.num_edges, 2, dtype=torch.float64, requires_grad=True)
        fn = lambda q, k, v, b: graph_attention(q, k, v, g, bias=b, **opts)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v, bias))


def test_gradcheck_with_dropout_replayed():
    g = rules.band(9, radius=3)
    plan = build_plan(g.edge_index, 9, 9, tile=4, dense_threshold=0.5)
    q, k, v = inputs(9, 9, H=2, D=3, Dv=2, dtype=torch.float64)
    fn = lambda q, k, v: GraphAttentionFunction.apply(q, k, v, None, plan, 0.5, 0.3, 1234)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_dropout_drops_the_right_fraction_and_rescales():
    n = 64
    g = rules.full(n)
    q, k, _ = inputs(n, n, H=2)
    v = torch.eye(n).unsqueeze(1).expand(n, 2, n).contiguous()  # out[i, h, j] = P'_ij
    torch.manual_seed(0)
    out = graph_attention(q, k, v, g, dropout_p=0.25)
    _, p = dense_attention(q, k, v, g.to_dense())
    p = p.permute(1, 0, 2).float()  # [i, h, j]
    kept = out != 0
    frac = 1 - kept.float().mean().item()
    assert abs(frac - 0.25) < 0.02
    torch.testing.assert_close(out[kept], p[kept] / 0.75, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    assert torch.equal(graph_attention(q, k, v, g, dropout_p=0.25), out)  # seeded: reproducible


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    g = rules.band(50, radius=4)
    q, k, v = inputs(50, 50, dtype=dtype)
    out = graph_attention(q, k, v, g)
    assert out.dtype == dtype
    ref, _ = dense_attention(q, k, v, g.to_dense())
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_plan_is_cached_on_graph():
    g = rules.band(100, radius=5)
    q, k, v = inputs(100, 100)
    graph_attention(q, k, v, g)
    plans = [val for key, val in g._cache.items() if key[0] == "plan"]
    graph_attention(q, k, v, g)
    assert [val for key, val in g._cache.items() if key[0] == "plan"] == plans and len(plans) == 1


def test_errors():
    g = rules.band(10, radius=1)
    q, k, v = inputs(10, 10)
    with pytest.raises(ValueError, match="num_nodes = 10"):
        graph_attention(q[:9], k[:9], v[:9], g)
    with pytest.raises(ValueError, match=r"shape \[N, H, D\]"):
        graph_attention(q[0], k, v, g)
    with pytest.raises(TypeError, match="floating"):
        graph_attention(q.long(), k, v, g)
    with pytest.raises(ValueError, match="bias of shape"):
        graph_attention(q, k, v, g, bias=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="queries"):
        graph_attention(q, k, v, torch.tensor([[0], [10]]))
    with pytest.raises(ValueError, match="keys"):
        graph_attention(q, k, v, torch.tensor([[11], [0]]))
    with pytest.raises(ValueError, match=r"at least one head"):
        graph_attention(q[:, :0], k[:, :0], v[:, :0], g)
    with pytest.raises(ValueError, match=r"head dims >= 1"):
        graph_attention(q[..., :0], k[..., :0], v, g)
    with pytest.raises(ValueError, match=r"head dims >= 1"):
        graph_attention(q, k, v[..., :0], g)
    with pytest.raises(ValueError, match=r"without \+inf"):
        graph_attention(q, k, v, g, bias=torch.full((g.num_edges, 3), float("inf")))
    with pytest.raises(ValueError, match="head_mask only with an edge_index"):
        graph_attention(q, k, v, g, head_mask=torch.ones(g.num_edges, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"head_mask of shape \[3, 3\]"):
        graph_attention(q, k, v, torch.tensor([[1, 0, 1], [0, 0, 0]]), head_mask=torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="head_mask to be a bool tensor"):
        graph_attention(q, k, v, torch.tensor([[1, 0, 1], [0, 0, 0]]), head_mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="dropout_p"):
        graph_attention(q, k, v, g, dropout_p=1.5)
    with pytest.raises(TypeError, match="AttentionGraph or an edge_index"):
        graph_attention(q, k, v, "band")
    with pytest.raises(ValueError, match="num_queries = 5"):
        graph_attention(q, k, v, g, num_queries=5)


def test_edge_index_plan_is_cached_while_the_tensor_lives_unchanged():
    import gc
    import weakref

    from graphattn.nn import functional

    ei = rules.random(90, num_random_keys=4, seed=5).edge_index
    ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(1))]  # unsorted
    q, k, v = inputs(90, 90)
    out1 = graph_attention(q, k, v, ei, tile=16)
    entry = functional._EDGE_INDEX_CACHE[ei]
    plan = entry.plans[(16, 0.25)]
    out2 = graph_attention(q, k, v, ei, tile=16)
    assert functional._EDGE_INDEX_CACHE[ei] is entry and len(entry.plans) == 1
    assert entry.plans[(16, 0.25)] is plan
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    graph_attention(q, k, v, ei, tile=8)  # other options: a second plan
    assert len(entry.plans) == 2

    # In place: the version changes, the checks and the plan are redone.
    ei[0] = (ei[0] + 1) % 90
    check_against_reference(q, k, v, ei, 90, 90, ei, tile=16)
    assert functional._EDGE_INDEX_CACHE[ei] is not entry
    ei[0, 0] = 90
    with pytest.raises(ValueError, match=r"expected edge_index\[0\] \(keys\) in \[0, 90\)"):
        graph_attention(q, k, v, ei)

    # The cache holds neither the tensor nor (for int32) its int64 copy beyond their lifetime.
    for dtype in (torch.int64, torch.int32):
        e = rules.band(40, radius=3).edge_index.to(dtype)
        qq, kk, vv = inputs(40, 40)
        graph_attention(qq, kk, vv, e)
        assert (functional._EDGE_INDEX_CACHE[e].ei is None) == (dtype == torch.int64)
        ref = weakref.ref(e)
        del e
        gc.collect()
        assert ref() is None


def test_edge_index_cache_key_includes_the_sizes_and_inference_mode_is_not_cached():
    from graphattn.nn import functional

    ei = torch.tensor([[0, 1, 2], [0, 0, 1]])
    q, k, v = inputs(2, 3)
    graph_attention(q, k, v, ei)
    with pytest.raises(ValueError, match=r"expected edge_index\[0\] \(keys\) in \[0, 2\)"):
        graph_attention(q, k[:2], v[:2], ei)  # same tensor, fewer keys: checked again
    with torch.inference_mode():
        e2 = torch.tensor([[0, 1], [1, 0]])
        out = graph_attention(q.detach(), k.detach(), v.detach(), e2)
        assert e2 not in functional._EDGE_INDEX_CACHE
    assert out.shape == (2, 3, 5)


def test_trusted_edge_index_skips_the_checks_until_modified(monkeypatch):
    from graphattn.nn import functional

    ei = rules.band(30, radius=2).edge_index.clone()
    q, k, v = inputs(30, 30)
    functional._trust_edge_index(ei, 30, 30)
    calls = []
    real = functional._check_edge_index
    monkeypatch.setattr(functional, "_check_edge_index", lambda *a: calls.append(1) or real(*a))
    check_against_reference(q, k, v, ei, 30, 30, ei)
    assert calls == []
    ei.add_(0)  # written in place (same values): checked again
    graph_attention(q, k, v, ei)
    assert calls == [1]


def test_memory_is_refused_before_it_is_spent():
    from graphattn._memory import MemoryBudgetError, memory_limit

    # 10^7 queries as a broadcast view (no memory of its own): the output alone would be ~10 GB.
    q = torch.zeros(1, 1, 1).expand(10**7, 4, 64)
    ei = torch.tensor([[0], [0]])
    with memory_limit("1G"), pytest.raises(MemoryBudgetError, match=r"graph_attention over 1 edges \(10,000,000 "
                                                                    r"queries.*need an estimated .* GB, more than the 1.0 GB budget"):
        graph_attention(q, q, q, ei)
    g = rules.band(64, radius=3)
    qq, kk, vv = inputs(64, 64)
    with memory_limit("64M"):  # a small call fits
        graph_attention(qq, kk, vv, g)
