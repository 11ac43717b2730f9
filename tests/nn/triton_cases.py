"""Cases for the fused Triton kernels: under the Triton interpreter on CPU, or compiled on CUDA.

Triton chooses interpreter or compiled mode when triton is first imported, so these cases run
in a subprocess (``python -m tests.nn.triton_cases [case ...]`` from the repository root prints one JSON line per case):
on CPU with ``TRITON_INTERPRET=1``, or on the GPU with ``GRAPHATTN_TRITON_DEVICE=cuda``.
``test_triton_kernels.py`` starts it and reports every case as its own test. Each case checks
the kernels against the float64 dense reference (computed on CPU; forward and gradients) on
small graphs: the interpreter runs every program in numpy, one after the other.
"""

import functools
import json
import os
import sys
import time
import traceback

import torch
from tests.nn.reference import dense_attention, dense_bias, dense_mask

from graphattn import compose, rules
from graphattn.nn._engine import GraphAttentionFunction
from graphattn.nn.plan import build_plan

# Normwise relative error bounds: fp32 as the torch engine; half precision at 4 units of
# round-off (2**-11, 2**-8): P and dS are rounded to the input dtype before their matmuls, as in
# flash attention, and the reference sees the same rounded inputs.
TOL = {torch.float32: 1e-5, torch.float16: 4 * 2**-11, torch.bfloat16: 4 * 2**-8}
DEVICE = torch.device(os.environ.get("GRAPHATTN_TRITON_DEVICE", "cpu"))


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (normwise relative error)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def bipartite(nq=40, nk=56, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(nq, nk, generator=gen) < 0.15
    mask[:, 16:32] |= True  # a dense stripe: dense tiles and sparse edges in one plan
    mask[3] = False  # a query without keys
    key, query = mask.t().nonzero(as_tuple=True)
    ei = torch.stack([key, query])
    return ei[:, torch.argsort(ei[1] * nk + ei[0])], nq, nk


def keyless(n=48):
    g = rules.band(n, radius=6)
    keep = (g.edge_index[1] % 7) != 2  # queries 2, 9, 16, ... attend nothing
    return g.edge_index[:, keep], n, n


def per_head(n=64):
    g = compose.stack_heads([rules.band(n, radius=3), rules.dilated(n, radius=2, dilation=5)
                             | rules.random(n, num_random_keys=2, seed=4)])
    return g.edge_index, n, n, g.head_mask


GRAPHS = {
    "band": lambda: (rules.band(70, radius=9).edge_index, 70, 70),
    "bigbird": lambda: (rules.bigbird(96, block_size=8, seed=0).edge_index, 96, 96),
    "random": lambda: (rules.random(80, num_random_keys=5, seed=1).edge_index, 80, 80),
    "bipartite": bipartite,
    "keyless": keyless,
}


def inputs(nq, nk, H=2, D=16, Dv=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen).to(DEVICE, dtype).requires_grad_(True)  # noqa: E731
    return mk(nq, H, D), mk(nk, H, D), mk(nk, H, Dv)


def check(tk, ei, nq, nk, *, head_mask=None, bias=False, H=2, D=16, Dv=16, dtype=torch.float32, tile=16,
          threshold=0.25, scale=None):
    plan = build_plan(ei.to(DEVICE), nq, nk, head_mask=None if head_mask is None else head_mask.to(DEVICE),
                      tile=tile, dense_threshold=threshold)
    q, k, v = inputs(nq, nk, H, D, Dv, dtype)
    b = None
    if bias:
        b = torch.randn(ei.shape[1], H, generator=torch.Generator().manual_seed(9)).to(DEVICE).requires_grad_(True)
    out, lse = tk.fused_attention(q, k, v, plan, bias=b, scale=scale)
    assert out.dtype == dtype and out.shape == (nq, H, Dv) and lse.dtype == torch.float32
    # The reference sees exactly the (rounded) inputs the kernel saw, in float64.
    qd, kd, vd = (t.detach().cpu().double().requires_grad_(True) for t in (q, k, v))
    bd = None if b is None else b.detach().cpu().double().requires_grad_(True)
    mask = dense_mask(ei, nq, nk)
    if head_mask is not None:
        mask = torch.stack([dense_mask(ei[:, head_mask[:, h]], nq, nk) for h in range(H)])
    ref, _ = dense_attention(qd, kd, vd, mask, None if bd is None else dense_bias(ei, bd, nq, nk), scale=scale)
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    assert torch.isfinite(out).all() and torch.isfinite(lse[lse > float("-inf")]).all()
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref.backward(go)
    wrt = (q, k, v) + (() if b is None else (b,))
    grads = torch.autograd.grad(out, wrt, go.to(DEVICE, dtype))
    for name, g, r in zip("qkvb", grads, (qd, kd, vd, bd)):
        assert g.dtype == (dtype if name != "b" else torch.float32)
        assert torch.isfinite(g).all(), name
        assert rel_err(g, r.grad) < tol, name
    return plan, out


def _tk():
    from graphattn.nn import triton

    return triton


def _tables_mod():
    from graphattn.nn.triton import tables

    return tables


def case_reference(name):
    tk = _tk()
    ei, nq, nk = GRAPHS[name]()
    plan, out = check(tk, ei, nq, nk)
    if name == "keyless":
        assert torch.all(out[2] == 0) and torch.all(out[9] == 0)
    if name == "bipartite":
        assert torch.all(out[3] == 0)
    if name in ("bipartite", "band"):
        assert plan.dense and plan.sparse is not None  # both kernels ran
    if name == "random":
        assert not plan.dense  # the CSR kernel alone


def case_bias():
    ei, nq, nk = bipartite()
    check(_tk(), ei, nq, nk, bias=True)  # dense tiles and sparse edges carry the bias


def case_per_head():
    ei, nq, nk, hm = per_head()
    plan, _ = check(_tk(), ei, nq, nk, head_mask=hm, bias=True)
    assert plan.num_heads == 2 and plan.dense and plan.sparse is not None


def case_tiling(tile, threshold):
    # tile 8 pads the kernel's blocks to 16; D = 12, Dv = 5 pad the head dims.
    ei = rules.bigbird(64, block_size=8, seed=3).edge_index
    check(_tk(), ei, 64, 64, tile=tile, threshold=threshold, D=12, Dv=5, H=1, scale=0.3)


def case_dtype(dtype):
    ei, nq, nk = bipartite()
    check(_tk(), ei, nq, nk, dtype=dtype)


def case_dropout():
    # The same drop key gives the torch engine's keep-mask bit for bit: same output and grads.
    tk = _tk()
    ei, nq, nk = bipartite()
    plan = build_plan(ei.to(DEVICE), nq, nk, tile=16)
    q, k, v = inputs(nq, nk)
    key = 0x1234_5678_9ABC_DEF
    out, _ = tk.fused_attention(q, k, v, plan, dropout_p=0.3, drop_key=key)
    ref, _ = GraphAttentionFunction.apply(q, k, v, None, plan, 0.25, 0.3, key)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(out, tk.fused_attention(q, k, v, plan)[0]) > 0.05  # dropout did something
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    for g, r in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        assert rel_err(g, r) < 1e-5


def case_half_bias_dropout(dtype):
    # Half precision runs dK/dV in the query-first orientation (fp32 runs keys-first and in two
    # passes): the bias gradient and the keep-mask there too, against the torch engine's
    # fp32-computed result on the same rounded inputs.
    tk = _tk()
    ei, nq, nk = bipartite()
    plan = build_plan(ei.to(DEVICE), nq, nk, tile=16)
    q, k, v = inputs(nq, nk, dtype=dtype)
    b = torch.randn(ei.shape[1], 2, generator=torch.Generator().manual_seed(9)).to(DEVICE).requires_grad_(True)
    key = 0x0BAD_5EED
    out, _ = tk.fused_attention(q, k, v, plan, bias=b, dropout_p=0.3, drop_key=key)
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    ref, _ = GraphAttentionFunction.apply(q32, k32, v32, b, plan, 0.25, 0.3, key)
    assert out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v, b), go)
    for g, r in zip(grads, torch.autograd.grad(ref, (q32, k32, v32, b), go.float())):
        assert rel_err(g, r) < TOL[dtype]


def case_no_edges():
    tk = _tk()
    plan = build_plan(torch.zeros(2, 0, dtype=torch.int64, device=DEVICE), 5, 7, tile=16)
    q, k, v = inputs(5, 7)
    out, lse = tk.fused_attention(q, k, v, plan)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    dq, dk = torch.autograd.grad(out.sum(), (q, k))
    assert torch.all(dq == 0) and torch.all(dk == 0)


def case_argument_errors():
    tk = _tk()
    ei, nq, nk = GRAPHS["band"]()
    ei = ei.to(DEVICE)
    plan = build_plan(ei, nq, nk, tile=16)
    q, k, v = inputs(nq, nk)
    for call, exc, text in [
        (lambda: tk.fused_attention(q[:69], k, v, plan), ValueError, "expected a plan over 69 queries"),
        (lambda: tk.fused_attention(q, k, v, plan, bias=torch.zeros(3, 2, device=DEVICE)), ValueError,
         "expected bias of shape"),
        (lambda: tk.fused_attention(q, k, v, ei), TypeError, "expected plan to be a TilingPlan"),
        (lambda: tk.fused_attention(q.double(), k.double(), v.double(), plan), RuntimeError,
         "float32, bfloat16 or float16, got torch.float64"),
    ]:
        try:
            call()
        except exc as e:
            assert text in str(e), str(e)
        else:
            raise AssertionError(f"no {exc.__name__} ({text})")


CASES = {
    **{f"reference-{name}": functools.partial(case_reference, name) for name in GRAPHS},
    "bias": case_bias,
    "per-head": case_per_head,
    "tiling-t8-all-dense": functools.partial(case_tiling, 8, 0.0),
    "tiling-all-sparse": functools.partial(case_tiling, 16, 1.0),
    "tiling-t32": functools.partial(case_tiling, 32, 0.25),
    "bfloat16": functools.partial(case_dtype, torch.bfloat16),
    "float16": functools.partial(case_dtype, torch.float16),
    "dropout": case_dropout,
    "bias-dropout-float16": functools.partial(case_half_bias_dropout, torch.float16),
    "bias-dropout-bfloat16": functools.partial(case_half_bias_dropout, torch.bfloat16),
    "no-edges": case_no_edges,
    "argument-errors": case_argument_errors,
}


def case_dispatch_graph_attention():
    # graph_attention under use(Backend.TRITON) runs the kernels: same results as the torch engine,
    # the input dtype kept, weights from the kernels' lse.
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import Backend, use

    g = (rules.bigbird(64, block_size=8, seed=1) | rules.random(64, num_random_keys=3, seed=2)).to(DEVICE)
    q, k, v = inputs(64, 64)
    bias = torch.randn(g.num_edges, 2, generator=torch.Generator().manual_seed(4)).to(DEVICE).requires_grad_(True)
    with use(Backend.TRITON):
        out, w = graph_attention(q, k, v, g, bias=bias, tile=16, return_attention_weights=True)
        half = graph_attention(q.half(), k.half(), v.half(), g, bias=bias.half(), tile=16)
    with use(Backend.TORCH):
        ref, w_ref = graph_attention(q, k, v, g, bias=bias, tile=16, return_attention_weights=True)
        ref_half = graph_attention(q.half(), k.half(), v.half(), g, bias=bias.half(), tile=16)
    assert half.dtype == torch.float16 and rel_err(half, ref_half) < TOL[torch.float16]
    assert rel_err(out, ref) < 1e-5 and rel_err(w, w_ref) < 1e-5
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for a, b in zip(torch.autograd.grad(out, (q, k, v, bias), go), torch.autograd.grad(ref, (q, k, v, bias), go)):
        assert rel_err(a, b) < 1e-5


def case_dispatch_layer():
    # The GraphAttention layer (batch folded into heads, ETC relative-position bias, dropout in
    # training) gives the same outputs and parameter gradients through both backends.
    from graphattn.nn import GraphAttention
    from graphattn.nn.backends import Backend, use

    g = rules.etc(24, num_global=2, radius=3, max_relative=2).to(DEVICE)
    torch.manual_seed(0)
    layer = GraphAttention(16, 2, num_relative=6, dropout=0.25)
    with torch.no_grad():
        layer.relative_bias.weight.normal_()
    layer.to(DEVICE)
    x = torch.randn(2, g.num_nodes, 16, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for backend in (Backend.TRITON, Backend.TORCH):
        layer.zero_grad()
        torch.manual_seed(7)  # the same dropout key for both
        with use(backend):
            y = layer(x, g)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in layer.parameters()]))
    (y1, g1), (y2, g2) = results
    assert rel_err(y1, y2) < 1e-5
    scale = max(float(b.abs().max()) for b in g2)  # k_proj.bias has an exactly-zero gradient
    for a, b in zip(g1, g2):
        assert float((a - b).abs().max()) < 1e-5 * scale


def case_lse_gradients(name, dtype=torch.float32):
    # return_lse: the kernels' lse and the gradients through out and lse together equal the
    # float64 dense reference (the lse gradient enters the backward as dS += P * dlse).
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import Backend, use

    ei, nq, nk = GRAPHS[name]()
    q, k, v = inputs(nq, nk, dtype=dtype)
    with use(Backend.TRITON):
        out, lse = graph_attention(q, k, v, ei.to(DEVICE), tile=16, return_lse=True)
    qd, kd, vd = (t.detach().cpu().double().requires_grad_(True) for t in (q, k, v))
    mask = dense_mask(ei, nq, nk)
    ref, _ = dense_attention(qd, kd, vd, mask)
    s = torch.einsum("ihd,jhd->hij", qd, kd) * qd.shape[-1] ** -0.5
    ref_lse = torch.logsumexp(s.masked_fill(~mask, float("-inf")), -1).t()  # [nq, H]
    has = mask.any(-1)
    assert torch.equal(torch.isinf(lse.cpu()), ~has[:, None].expand_as(lse.cpu()))
    assert rel_err(lse.cpu()[has], ref_lse[has]) < TOL[dtype]
    gen = torch.Generator().manual_seed(6)
    go = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    gl = torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64)
    loss_ref = (ref * go).sum() + (ref_lse[has] * gl[has]).sum()
    ref_grads = torch.autograd.grad(loss_ref, (qd, kd, vd))
    loss = (out.double() * go.to(DEVICE)).sum() + (lse.double()[has.to(DEVICE)] * gl.to(DEVICE)[has.to(DEVICE)]).sum()
    for a, b in zip(torch.autograd.grad(loss, (q, k, v)), ref_grads):
        assert rel_err(a, b) < (1e-5 if dtype == torch.float32 else TOL[dtype]), (name, rel_err(a, b))


def case_large_scores_decline():
    # Scores beyond the range where float32 scores are exact: the kernels decline (a forced
    # TRITON says why); AUTO and TORCH compute them in float64, against the float64 reference.
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import Backend, use

    ei, nq, nk = GRAPHS["band"]()
    q, k, v = inputs(nq, nk)
    q, k = (q.detach() * 40).requires_grad_(True), (k.detach() * 40).requires_grad_(True)
    with use(Backend.TRITON):
        try:
            graph_attention(q, k, v, ei.to(DEVICE), tile=16)
        except RuntimeError as err:
            assert "exceed the 1024 within which float32 scores are exact" in str(err), err
        else:
            raise AssertionError("the kernels ran scores beyond their exact range")
    out = graph_attention(q, k, v, ei.to(DEVICE), tile=16)
    qd, kd, vd = (t.detach().cpu().double() for t in (q, k, v))
    ref, _ = dense_attention(qd, kd, vd, dense_mask(ei, nq, nk))
    assert rel_err(out, ref) < 1e-5


CASES["lse-gradients-band"] = functools.partial(case_lse_gradients, "band")
CASES["lse-gradients-random"] = functools.partial(case_lse_gradients, "random")
CASES["lse-gradients-keyless"] = functools.partial(case_lse_gradients, "keyless")
CASES["lse-gradients-bipartite-bf16"] = functools.partial(case_lse_gradients, "bipartite", torch.bfloat16)
CASES["large-scores-decline"] = case_large_scores_decline
CASES["dispatch-graph-attention"] = case_dispatch_graph_attention
CASES["dispatch-layer"] = case_dispatch_layer


def case_split_long_rows(dtype=torch.float32):
    # Tiny work limits split the global rows / keys into segments that are merged afterwards:
    # dense query and key blocks (BigBird's global blocks) and sparse rows and key rows (a global
    # token over a random graph), with a bias, against the reference and against the unsplit run.
    tk = _tk()
    tm = _tables_mod()
    old = tm.MAX_TILES, tm.MAX_CHUNKS
    tm.MAX_TILES, tm.MAX_CHUNKS = 2, 1
    try:
        g = rules.bigbird(96, block_size=8, seed=2)
        plan, _ = check(tk, g.edge_index, 96, 96, bias=True, dtype=dtype)
        tabs = _tables_mod().get_tables(plan, DEVICE)
        assert tabs.qwork.segments and tabs.kwork.segments
        g = rules.random(80, num_random_keys=4, seed=5) | rules.global_tokens(80, global_indices=[0, 41])
        plan, _ = check(tk, g.edge_index, 80, 80, bias=True, dtype=dtype)
        tabs = _tables_mod().get_tables(plan, DEVICE)
        assert tabs.rwork.segments and tabs.twork.segments
    finally:
        tm.MAX_TILES, tm.MAX_CHUNKS = old


def case_split_with_dropout_and_heads():
    # The split paths replay the torch engine's dropout and honour a per-head layout.
    tk = _tk()
    tm = _tables_mod()
    old = tm.MAX_TILES, tm.MAX_CHUNKS
    tm.MAX_TILES, tm.MAX_CHUNKS = 1, 1
    try:
        g = compose.stack_heads([rules.band(64, radius=12),
                                 rules.random(64, num_random_keys=3, seed=2) | rules.global_tokens(64, global_indices=[5])])
        plan = build_plan(g.edge_index.to(DEVICE), 64, 64, head_mask=g.head_mask.to(DEVICE), tile=16)
        q, k, v = inputs(64, 64)
        key = 987654321987
        out, _ = tk.fused_attention(q, k, v, plan, dropout_p=0.2, drop_key=key)
        ref, _ = GraphAttentionFunction.apply(q, k, v, None, plan, 0.25, 0.2, key)
        assert rel_err(out, ref) < 1e-5
        go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
            assert rel_err(a, b) < 1e-5
        tabs = _tables_mod().get_tables(plan, DEVICE)
        assert tabs.qwork.segments and tabs.kwork.segments and tabs.rwork.segments and tabs.twork.segments
    finally:
        tm.MAX_TILES, tm.MAX_CHUNKS = old


CASES["split-long-rows"] = case_split_long_rows
CASES["split-long-rows-bf16"] = functools.partial(case_split_long_rows, torch.bfloat16)
CASES["split-dropout-per-head"] = case_split_with_dropout_and_heads


def main(names) -> int:
    """Run the cases (all when ``names`` is empty); one JSON line per case on stdout."""
    if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("tests.nn.triton_cases on CPU needs TRITON_INTERPRET=1 in the environment", file=sys.stderr)
        return 2
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("tests.nn.triton_cases: GRAPHATTN_TRITON_DEVICE=cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    for name in names or CASES:
        t0 = time.perf_counter()
        try:
            CASES[name]()
            result = {"case": name, "ok": True}
        except Exception:  # every failure is reported with its traceback
            result = {"case": name, "ok": False, "error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
