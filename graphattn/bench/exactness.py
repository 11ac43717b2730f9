"""Exactness at every score scale: graph attention's forward and gradients against the float64
dense reference, per engine path, as the scores grow.

Band radius 40 over 256 tokens, 4 heads of 32, ``q`` and ``k`` multiplied by ``scale`` (scores
grow as ``scale**2``: up to ~1e9 at the largest), loss ``out.square().sum()``. Paths:

- ``dense tiles``: the band through the plan's dense tile matmuls (a zero edge bias keeps it off
  torch's fused CPU kernels);
- ``fused CPU``: the same without a bias (torch's fused flash-attention CPU kernels where the
  engine allows them);
- ``CSR``: the band as sparse edges only (``dense_threshold=1``), through ``sampled_addmm`` /
  ``spmm``;
- ``mixed``: band + random keys + a global token, dense tiles and CSR merged;
- ``keyless``: the band with every seventh query left without keys.

Each cell is the largest error of ``out``, ``dq``, ``dk``, ``dv`` against the float64
reference, ``max|x - ref|``, relative to two scales: the reference's own largest magnitude
``max|ref|`` (the error a user sees) and the largest *summand* of that gradient, ``M`` (``dq_i =
s * sum_j P_ij (dP_ij - delta_i) k_j`` has summands up to ``M = s * 2 max|dO| max|v| max|k|``;
``dk`` likewise with ``q``; ``M = max|dO|`` for ``dv`` and ``max|v|`` for ``out``). Rounding in
any finite precision is relative to ``M``: where the softmax saturates, ``dq`` and ``dk`` vanish
in exact arithmetic (``max|ref| / M`` below 1e-16), and no float32 or float64 computation can
return them to a fraction of their own size; there the error relative to ``M`` is what says
whether the numbers are right.
"""

from __future__ import annotations

import torch

__all__ = ["PATHS", "SCALES", "errors", "run"]

SCALES = (1.0, 10.0, 100.0, 1000.0, 10000.0)
PATHS = ("dense tiles", "fused CPU", "CSR", "mixed", "keyless")


def _case(path: str, n: int):
    from graphattn import rules

    g = rules.band(n, radius=40)
    opts = {}
    if path == "CSR":
        opts = dict(dense_threshold=1.0)
    elif path == "mixed":
        g = g | rules.random(n, num_random_keys=8, seed=1) | rules.global_tokens(n, global_indices=[n // 3])
    elif path == "keyless":
        keep = (g.edge_index[1] % 7) != 3
        g = g._select(keep)
    return g, opts


def errors(path: str, scale: float, *, n: int = 256, heads: int = 4, dim: int = 32, seed: int = 0) -> dict:
    """``{name: {"own": err / max|ref|, "summand": err / M, "saturation": max|ref| / M}}`` for
    ``name`` in out, dq, dk, dv."""
    from graphattn.nn import graph_attention
    from graphattn.nn.reference import dense_attention

    g, opts = _case(path, n)
    gen = torch.Generator().manual_seed(seed)
    q0, k0, v0 = (torch.randn(n, heads, dim, generator=gen) for _ in range(3))
    q = (q0 * scale).requires_grad_(True)
    k = (k0 * scale).requires_grad_(True)
    v = v0.clone().requires_grad_(True)
    bias = torch.zeros(g.num_edges, heads) if path == "dense tiles" else None
    out = graph_attention(q, k, v, g, bias=bias, **opts)
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, _ = dense_attention(qd, kd, vd, g.to_dense())
    rq, rk, rv = torch.autograd.grad(ref.square().sum(), (qd, kd, vd))
    s, mo, mv = dim ** -0.5, 2 * float(ref.detach().abs().max()), float(vd.detach().abs().max())
    summand = {"out": mv, "dv": mo, "dq": s * 2 * mo * mv * float(kd.detach().abs().max()),
               "dk": s * 2 * mo * mv * float(qd.detach().abs().max())}
    result = {}
    for name, a, b in (("out", out, ref), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        a, b = a.detach().double(), b.detach()
        top, err = float(b.abs().max()), float((a - b).abs().max())
        result[name] = dict(own=err / top if top > 0 else (0.0 if err == 0 else float("inf")),
                            summand=err / summand[name], saturation=top / summand[name])
    return result


def run(paths=PATHS, scales=SCALES, *, n: int = 256) -> str:
    from graphattn.bench._timing import format_table

    rows = []
    for path in paths:
        for scale in scales:
            e = errors(path, scale, n=n)
            names = ("out", "dq", "dk", "dv")
            rows.append([path, f"{scale:g}", *(f"{e[k]['own']:.1e}" for k in names),
                         *(f"{e[k]['summand']:.1e}" for k in names), f"{e['dq']['saturation']:.1e}"])
    return format_table(["path", "q, k x", "out / own", "dq / own", "dk / own", "dv / own", "out / M", "dq / M",
                         "dk / M", "dv / M", "max|dq ref| / M"], rows)
