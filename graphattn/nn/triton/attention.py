"""The fused forward and backward: launchers, split-segment merges, the autograd function (internal)."""

from __future__ import annotations

import contextlib
import math

import torch

from graphattn.nn.plan import TilingPlan
from graphattn.nn.triton.launch import dense_config, dense_launch, next_pow2, unavailable_reason
from graphattn.nn.triton.runtime import interpreted, kernels_module
from graphattn.nn.triton.tables import Tables, Work, get_tables

__all__ = ["FusedGraphAttention", "fused_attention"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_M32 = 0xFFFFFFFF


def _lse_merge(owner, count, m, l, acc):
    """Merge partial online-softmax states (log2-domain ``m``, ``l``, unnormalised ``acc``;
    leading dim = segment) into ``count`` owners by the log-sum-exp rule."""
    shape = (count,) + tuple(m.shape[1:])
    index = owner.view((-1,) + (1,) * (m.dim() - 1)).expand_as(m)
    mm = torch.full(shape, float("-inf"), device=m.device).scatter_reduce_(0, index, m, "amax")
    safe = torch.where(torch.isinf(mm), torch.zeros_like(mm), mm)
    w = torch.exp2(m - safe[owner])
    ll = torch.zeros(shape, device=m.device).index_add_(0, owner, l * w)
    aa = torch.zeros(shape + (acc.shape[-1],), device=m.device).index_add_(0, owner, acc * w[..., None])
    return mm, ll, aa


def _finish(m, l, acc, dtype):
    """Normalised output and natural-log lse from a log2-domain state."""
    ok = l > 0
    out = acc / torch.where(ok, l, torch.ones_like(l))[..., None]
    lse = torch.where(ok, (m + torch.log2(torch.where(ok, l, torch.ones_like(l)))) * _LN2,
                      torch.full_like(m, float("-inf")))
    return out.to(dtype), lse


class _Call:
    """Per-call constants shared by the launches of one forward or backward."""

    def __init__(self, q, k, v, bias, tabs: Tables, scale, dropout_p, drop_key):
        self.nq, self.H, self.D = q.shape
        self.nk, self.DV = k.shape[0], v.shape[2]
        self.tabs = tabs
        self.scale, self.scale2 = float(scale), float(scale) * _LOG2E
        self.dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        self.bias = bias if bias is not None else torch.zeros(1, dtype=torch.float32, device=q.device)
        self.has_bias = bias is not None
        self.per_head = tabs.plan.num_heads is not None
        self.dropout = dropout_p > 0
        self.k0, self.k1 = int(drop_key) & _M32, (int(drop_key) >> 32) & _M32
        self.thr = int(dropout_p * 2**32)
        self.inv_keep = 1.0 / (1.0 - dropout_p)
        interp = interpreted()
        self.consts = dict(BLOCK_D=max(16, next_pow2(self.D)), BLOCK_DV=max(16, next_pow2(self.DV)))
        self.prec = "ieee" if q.dtype == torch.float32 else None  # never TF32 for fp32 inputs
        self.emu = interp and q.dtype == torch.bfloat16
        self.keys_first, self.dkdv_passes = dense_config(q.dtype)
        block_d = max(self.consts["BLOCK_D"], self.consts["BLOCK_DV"])
        self.launch = {name: ((1, 1) if interp else dense_launch(name, tabs.block_t, block_d, q.dtype, self.has_bias))
                       for name in ("fwd", "dq", "dkdv")}
        # CSR programs hold a [BLOCK_N, BLOCK_D] neighbour chunk: 8 warps from 64 x 256 up keep the
        # backward from spilling (sm_90 compile report), fewer for small chunks.
        chunk = tabs.block_n * max(self.consts["BLOCK_D"], self.consts["BLOCK_DV"])
        self.csr_warps = 1 if interp else (8 if chunk >= 16384 else (4 if tabs.block_n >= 64 else 2))

    def drop_args(self):
        return (self.k0, self.k1, self.thr, self.inv_keep)

    def dense_opts(self, kernel: str) -> dict:
        warps, stages = self.launch[kernel]
        return dict(num_warps=warps, num_stages=stages)

    def emap(self):
        return self.tabs.emap if self.has_bias else self.dummy

    def f32(self, *shape):
        return torch.empty(*shape, dtype=torch.float32, device=self.dummy.device)


def _items(work: Work, partial: bool):
    """(grid size, unit, start, stop) of the plain items or of the segments."""
    if partial:
        return work.segments, work.seg_unit, work.seg_start, work.seg_stop
    return work.items, work.unit, work.start, work.stop


def _forward(q, k, v, bias, tabs: Tables, scale, dropout_p, drop_key):
    impl = kernels_module()
    c = _Call(q, k, v, bias, tabs, scale, dropout_p, drop_key)
    nq, H, DV, T = c.nq, c.H, c.DV, tabs.T
    dev = q.device
    out = torch.empty(nq, H, DV, dtype=q.dtype, device=dev)
    lse = torch.empty(nq, H, dtype=torch.float32, device=dev)
    dense, csr = tabs.n_tiles > 0, tabs.csr
    if nq == 0:
        return out, lse
    if not dense and csr is None:  # no edges: every query is keyless
        return out.zero_(), lse.fill_(float("-inf"))
    if dense:
        if csr is None:
            acc = m = l = c.dummy
            if not tabs.covers_q:  # query blocks without dense tiles: keyless rows
                out.zero_()
                lse.fill_(float("-inf"))
        else:  # the running state per row, continued by the CSR part
            acc = torch.zeros(nq, H, DV, dtype=torch.float32, device=dev)
            m = torch.full((nq, H), float("-inf"), device=dev)
            l = torch.zeros(nq, H, device=dev)
        qw = tabs.qwork
        for partial in (False, True):
            n, unit, start, stop = _items(qw, partial)
            if n == 0:
                continue
            if partial:
                pacc, pm, pl = c.f32(n, T, H, DV), c.f32(n, T, H), c.f32(n, T, H)
            impl._dense_fwd[(n, H)](
                q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.tk,
                pacc if partial else acc, pm if partial else m, pl if partial else l, out, lse,
                nq, c.nk, H, tabs.hm, c.D, DV, T, c.scale2, *c.drop_args(),
                BLOCK_T=tabs.block_t, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                FINAL=csr is None, PARTIAL=partial, PREC=c.prec, EMU=c.emu, **c.dense_opts("fwd"), **c.consts)
        if qw.segments:  # long query blocks: merge their segments, per row
            mm, ll, aa = _lse_merge(qw.seg_owner, qw.long_units.numel(), pm, pl, pacc)
            rows, ok = tabs.block_rows(qw.long_units, nq)
            rows, mm, ll, aa = rows[ok], mm[ok], ll[ok], aa[ok]
            if csr is None:
                out[rows], lse[rows] = _finish(mm, ll, aa, q.dtype)
            else:
                m[rows], l[rows], acc[rows] = mm, ll, aa
    if csr is not None:
        rw = tabs.rwork
        for partial in (False, True):
            n, unit, start, stop = _items(rw, partial)
            if n == 0:
                continue
            if partial:
                pacc, pm, pl = c.f32(n, H, DV), c.f32(n, H), c.f32(n, H)
            state = (pacc, pm, pl) if partial else ((acc, m, l) if dense else (c.dummy,) * 3)
            impl._csr_fwd[(n, H)](
                q, k, v, c.bias, unit, start, stop, csr["col"], csr["eid"], csr["ha"], *state, out, lse,
                c.nk, H, c.D, DV, c.scale2, *c.drop_args(),
                BLOCK_N=tabs.block_n, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                INIT=dense and not partial, PARTIAL=partial, num_warps=c.csr_warps, **c.consts)
        if rw.segments:  # long rows: their segments and the dense part's state, merged
            rows = rw.long_units
            owner, pm_all, pl_all, pacc_all = rw.seg_owner, pm, pl, pacc
            if dense:
                own = torch.arange(rows.numel(), device=dev)
                owner = torch.cat([owner, own])
                pm_all, pl_all = torch.cat([pm, m[rows]]), torch.cat([pl, l[rows]])
                pacc_all = torch.cat([pacc, acc[rows]])
            out[rows], lse[rows] = _finish(*_lse_merge(owner, rows.numel(), pm_all, pl_all, pacc_all), q.dtype)
    return out, lse


def _backward(dout, dlse, q, k, v, bias, out, lse, tabs: Tables, scale, dropout_p, drop_key, want_dbias):
    impl = kernels_module()
    c = _Call(q, k, v, bias, tabs, scale, dropout_p, drop_key)
    nq, nk, H, D, DV, T = c.nq, c.nk, c.H, c.D, c.DV, tabs.T
    dev = q.device
    delta = (dout.float() * out.float()).sum(-1)  # [nq, H]
    if dlse is not None:  # d lse / d s = P: the lse gradient enters dS = P * (dP - delta + dlse)
        delta = delta - torch.where(torch.isinf(lse), torch.zeros_like(delta), dlse.float())
    delta = delta.contiguous()
    dense, csr = tabs.n_tiles > 0, tabs.csr
    # The dense items (and merges) write every row of a covered side; the CSR items then add.
    zq = torch.empty if (dense and tabs.covers_q) or (not dense and csr is not None and not tabs.rwork.segments) \
        else torch.zeros
    zk = torch.empty if (dense and tabs.covers_k) or (not dense and csr is not None and not tabs.twork.segments) \
        else torch.zeros
    dq = zq(nq, H, D, dtype=torch.float32, device=dev)
    dk = zk(nk, H, D, dtype=torch.float32, device=dev)
    dv = zk(nk, H, DV, dtype=torch.float32, device=dev)
    dbias = torch.zeros(tabs.plan.num_edges, H, dtype=torch.float32, device=dev) if want_dbias else c.dummy
    if dense:
        common = dict(BLOCK_T=tabs.block_t, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                      PREC=c.prec, EMU=c.emu, **c.consts)
        args = (nq, nk, H, tabs.hm, D, DV, T, c.scale, c.scale2, *c.drop_args())
        for partial in (False, True):
            n, unit, start, stop = _items(tabs.qwork, partial)
            if n:
                target = c.f32(n, T, H, D) if partial else dq
                impl._dense_bwd_dq[(n, H)](
                    q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.tk,
                    dout, lse, delta, target, dbias, *args, WANT_DBIAS=want_dbias, PARTIAL=partial, **common,
                    **c.dense_opts("dq"))
                if partial:
                    _assign_blocks(dq, tabs, tabs.qwork, target, nq)
            n, unit, start, stop = _items(tabs.kwork, partial)
            if n:
                tk_, tv_ = (c.f32(n, T, H, D), c.f32(n, T, H, DV)) if partial else (dk, dv)
                for want_dk, want_dv in c.dkdv_passes:
                    impl._dense_bwd_dkdv[(n, H)](
                        q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.kperm, tabs.tq,
                        dout, lse, delta, tk_, tv_, *args, PARTIAL=partial, KEYS_FIRST=c.keys_first,
                        WANT_DK=want_dk, WANT_DV=want_dv, **common, **c.dense_opts("dkdv"))
                if partial:
                    _assign_blocks(dk, tabs, tabs.kwork, tk_, nk)
                    _assign_blocks(dv, tabs, tabs.kwork, tv_, nk)
    if csr is not None:
        common = dict(BLOCK_N=tabs.block_n, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                      num_warps=c.csr_warps, **c.consts)
        args = (nk, H, D, DV, c.scale, c.scale2, *c.drop_args())
        for partial in (False, True):
            n, unit, start, stop = _items(tabs.rwork, partial)
            if n:
                target = c.f32(n, H, D) if partial else dq
                impl._csr_bwd_dq[(n, H)](
                    q, k, v, c.bias, unit, start, stop, csr["col"], csr["eid"], csr["ha"], dout, lse, delta,
                    target, dbias, *args, WANT_DBIAS=want_dbias, ADD=dense, PARTIAL=partial, **common)
                if partial:
                    dq.index_add_(0, tabs.rwork.seg_unit.long(), target)
            n, unit, start, stop = _items(tabs.twork, partial)
            if n:
                tk_, tv_ = (c.f32(n, H, D), c.f32(n, H, DV)) if partial else (dk, dv)
                impl._csr_bwd_dkdv[(n, H)](
                    q, k, v, c.bias, unit, start, stop, csr["tcol"], csr["teid"], csr["tha"], dout, lse, delta,
                    tk_, tv_, *args, ADD=dense, PARTIAL=partial, **common)
                if partial:
                    dk.index_add_(0, tabs.twork.seg_unit.long(), tk_)
                    dv.index_add_(0, tabs.twork.seg_unit.long(), tv_)
    return dq, dk, dv, (dbias if want_dbias else None)


def _assign_blocks(target, tabs: Tables, work: Work, parts, n):
    """Sum the segments' ``[S, T, H, X]`` partials per long block into its rows of ``target``."""
    summed = torch.zeros((work.long_units.numel(),) + tuple(parts.shape[1:]), device=parts.device)
    summed.index_add_(0, work.seg_owner, parts)
    rows, ok = tabs.block_rows(work.long_units, n)
    target[rows[ok]] = summed[ok]


def _on(device):
    # Triton launches on the current CUDA device: make it the tensors' one.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class FusedGraphAttention(torch.autograd.Function):
    """``(out, lse)`` of exact graph attention through the Triton kernels, with the fused
    backward; the gradients through both outputs are exact."""

    @staticmethod
    def forward(ctx, q, k, v, bias, plan, scale, dropout_p, drop_key):
        tabs = get_tables(plan, q.device)
        with _on(q.device):
            out, lse = _forward(q, k, v, bias, tabs, scale, dropout_p, drop_key)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.tabs, ctx.scale, ctx.dropout_p, ctx.drop_key = tabs, scale, dropout_p, drop_key
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, bias, out, lse = ctx.saved_tensors
        want_dbias = bias is not None and ctx.needs_input_grad[3]
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        with _on(q.device):
            dq, dk, dv, dbias = _backward(dout, dlse, q, k, v, bias, out, lse, ctx.tabs, ctx.scale,
                                          ctx.dropout_p, ctx.drop_key, want_dbias)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None if dbias is None else dbias.to(bias.dtype), None, None, None, None)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: TilingPlan, *,
                    bias: torch.Tensor | None = None, scale: float | None = None, dropout_p: float = 0.0,
                    drop_key: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact graph attention over ``plan`` with the Triton kernels.

    Args:
        q: ``[Nq, H, D]``; k: ``[Nk, H, D]``; v: ``[Nk, H, Dv]``; one dtype among fp32, bf16,
            fp16, on a CUDA device (or on CPU under ``TRITON_INTERPRET=1``).
        plan: the :class:`~graphattn.nn.plan.TilingPlan` of the graph (``Nq`` queries, ``Nk``
            keys; a per-head plan needs ``H`` heads).
        bias: ``[E, H]`` score bias in the plan's edge order (any float dtype; its gradient
            comes back in its dtype).
        scale: score scale (default ``1 / sqrt(D)``).
        dropout_p, drop_key: dropout on the probabilities with the torch engine's counter-based
            keep-mask of key ``drop_key`` (same mask as ``graphattn.nn._engine``).

    Returns:
        ``out`` ``[Nq, H, Dv]`` in the input dtype (zeros for queries without keys) and
        ``lse`` ``[Nq, H]`` float32 (natural log-sum-exp of the scores, ``-inf`` when keyless).
    """
    if not isinstance(plan, TilingPlan):
        raise TypeError(f"expected plan to be a TilingPlan, got {type(plan).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"expected {name} of shape [N, H, D], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    nq, H, D = q.shape
    if k.shape[:2] != v.shape[:2] or k.shape[1] != H or k.shape[2] != D:
        raise ValueError(f"expected k [Nk, {H}, {D}] and v [Nk, {H}, Dv], got {list(k.shape)} and {list(v.shape)}")
    if (plan.num_queries, plan.num_keys) != (nq, k.shape[0]):
        raise ValueError(f"expected a plan over {nq} queries and {k.shape[0]} keys, got "
                         f"{plan.num_queries} and {plan.num_keys}")
    if plan.num_heads is not None and plan.num_heads != H:
        raise ValueError(f"expected {plan.num_heads} heads for the plan's per-head layout, got {H}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (plan.num_edges, H)):
        raise ValueError(f"expected bias of shape [{plan.num_edges}, {H}], got "
                         f"{list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    why = unavailable_reason(q.device, q.dtype, tile=plan.tile if plan.dense else None, head_dims=(D, v.shape[2]))
    if why:
        raise RuntimeError(f"the Triton kernels cannot run: {why}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bias = None if bias is None else bias.contiguous()
    return FusedGraphAttention.apply(q, k, v, bias, plan, scale, float(dropout_p), int(drop_key))
