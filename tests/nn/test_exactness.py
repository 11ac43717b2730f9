"""Exact at every score scale: graph_attention's forward and gradients against the float64 dense
reference as q and k grow (scores up to ~1e9), on every torch-engine path, in fp32 and in half
precision; fused backends decline scores beyond their exact range.

The error of each tensor is bounded by ``tol * max|ref| + 16 * eps * M``: ``tol`` relative to the
tensor's own largest value (1e-4 for fp32 inputs, the dtype's rounding for half precision), plus
the rounding of the precision the engine computed in (``eps`` = 2**-24 for float32, 2**-53 for
float64) times the largest summand ``M`` of that gradient. The second term matters only where
the softmax saturates and a gradient vanishes in exact arithmetic (``dq`` of a one-hot row is
1e-164 of its summands): no finite precision returns it to a fraction of its own size.
"""

import math

import pytest
import torch

from graphattn import rules
from graphattn.nn import graph_attention
from graphattn.nn._engine import FP32_MAX_LOGIT, score_bound
from graphattn.nn.backends import Backend, use
from graphattn.nn.reference import dense_attention

SCALES = [1.0, 10.0, 100.0, 1e4]  # q and k multiplied: scores up to ~1e9


def case(path: str, n: int = 150):
    g = rules.band(n, radius=20)
    opts = {}
    if path == "csr":
        opts = dict(dense_threshold=1.0)
    elif path == "mixed":
        g = g | rules.random(n, num_random_keys=6, seed=1) | rules.global_tokens(n, global_indices=[n // 2])
    elif path == "keyless":
        g = g._select((g.edge_index[1] % 5) != 2)
    return g, opts


def check(out, grads, ref, ref_grads, q, k, v, dtype, computed_fp64, tol):
    D = q.shape[-1]
    eps = 2.0**-53 if computed_fp64 else 2.0**-24
    mo, mv = 2 * float(ref.detach().abs().max()), float(v.detach().abs().max())
    summands = [mv, D**-0.5 * 2 * mo * mv * float(k.abs().max()), D**-0.5 * 2 * mo * mv * float(q.abs().max()), mo]
    for name, a, b, M in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), summands):
        assert torch.isfinite(a).all(), name
        err = float((a.double() - b).abs().max())
        # Rounding to the returned dtype counts against the tensor's own size.
        own = max(tol, 2 * torch.finfo(dtype).eps) * float(b.abs().max())
        assert err <= own + 16 * eps * M, (name, err, own, M)


@pytest.mark.parametrize("path", ["dense-tiles", "fused-cpu", "csr", "mixed", "keyless"])
@pytest.mark.parametrize("scale", SCALES)
def test_fp32_forward_and_gradients_at_every_scale(path, scale):
    g, opts = case(path)
    n = g.num_nodes
    gen = torch.Generator().manual_seed(0)
    q0, k0, v0 = (torch.randn(n, 4, 32, generator=gen) for _ in range(3))
    q, k, v = (q0 * scale).requires_grad_(), (k0 * scale).requires_grad_(), v0.clone().requires_grad_()
    bias = torch.zeros(g.num_edges, 4) if path == "dense-tiles" else None  # keeps the fused CPU kernels off
    out = graph_attention(q, k, v, g, bias=bias, **opts)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = dense_attention(qd, kd, vd, g.to_dense())
    ref_grads = torch.autograd.grad(ref.square().sum(), (qd, kd, vd))
    fp64 = score_bound(q, k, 32**-0.5) > FP32_MAX_LOGIT
    check(out, grads, ref, ref_grads, qd, kd, vd, torch.float32, fp64, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 30.0, 200.0])  # fp16 q, k up to ~1e3: scores near 1e7
def test_half_precision_up_to_the_overflow_edge(dtype, scale):
    g, _ = case("mixed", 90)
    n = g.num_nodes
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, 2, 16, generator=gen) * s for s in (scale, scale, 1.0))
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    assert bool(torch.isfinite(q).all() and torch.isfinite(k).all())
    out = graph_attention(q, k, v, g)
    assert out.dtype == dtype
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))  # the same rounded inputs
    ref, _ = dense_attention(qd, kd, vd, g.to_dense())
    ref_grads = torch.autograd.grad(ref.square().sum(), (qd, kd, vd))
    fp64 = score_bound(q, k, 16**-0.5) > FP32_MAX_LOGIT
    check(out, grads, ref, ref_grads, qd, kd, vd, dtype, fp64, 0.0)


def test_ties_at_huge_scores_keep_their_shares():
    # Two identical keys at scores ~1e8: each carries half the weight. Folding log(2) into an
    # fp32 lse at 1e8 (spacing 8) would give both a weight of 1.
    n = 8
    q = torch.zeros(n, 1, 4)
    q[:, 0, 0] = 1e4
    k = torch.zeros(n, 1, 4)
    k[:, 0, 0] = 1e4
    v = torch.randn(n, 1, 4, generator=torch.Generator().manual_seed(0))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = graph_attention(qr, kr, vr, rules.full(n))
    torch.testing.assert_close(out, v.mean(0, keepdim=True).expand(n, 1, 4), rtol=1e-6, atol=1e-6)
    gv = torch.autograd.grad(out.sum(), vr)[0]
    torch.testing.assert_close(gv, torch.ones_like(gv))  # every key receives 1/n from each of n queries


def test_score_bound_bounds_every_score():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(30, 3, 8, generator=gen) * 7, torch.randn(20, 3, 8, generator=gen)
    bias = torch.randn(600, 3, generator=gen)
    bias[0, 0] = float("-inf")  # removes an edge: not a score
    s = torch.einsum("ihd,jhd->hij", q, k) * 0.3
    assert float(s.abs().max()) + float(bias[1:].abs().max()) <= score_bound(q, k, 0.3, bias)
    assert math.isinf(score_bound(torch.full((2, 1, 2), 3e38), torch.ones(2, 1, 2), 1.0))
    assert score_bound(torch.ones(2, 1, 2, dtype=torch.float16) * 6e4, torch.ones(2, 1, 2, dtype=torch.float16) * 6e4, 1.0) > 1e9


def test_flex_declines_scores_beyond_float32_exactness():
    g = rules.band(40, radius=3)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(40, 2, 8, generator=gen) for _ in range(3))
    with use(Backend.FLEX), torch.no_grad():
        graph_attention(q, k, v, g, tile=8)  # within range: runs
        with pytest.raises(RuntimeError, match="exceed the 1024 within which float32 scores are exact"):
            graph_attention(q * 100, k * 100, v, g, tile=8)
