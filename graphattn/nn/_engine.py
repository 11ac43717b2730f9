"""Exact attention over a tiling plan: forward, and a recomputing backward (internal).

Forward, per part (a chunk of a dense group: tile matmuls; the sparse CSR part: torch's
``sampled_addmm`` and ``spmm`` kernels, per head): scores, a part-local max ``m``, sum ``l`` and
unnormalised output; parts are merged into the running per-query ``(m, l, out)`` by the
log-sum-exp rule, as flash attention merges key blocks. Only ``out`` and the per-query ``(m, l)``
are kept for the backward, which recomputes every part's probabilities as ``exp(s - m) / l``
(flash attention's backward: ``dS = P * (dP - rowsum(dO * O))``; the gradient of the returned
``lse = m + log l`` enters as ``dS += P * dlse``), so no ``[E, H, D]`` tensor and no ``[E, H]``
probability tensor is ever stored.

Exact at any logit scale. A float32 score of magnitude ``|s|`` carries an absolute rounding error
of about ``|s| * 6e-8``, which becomes a relative error of the probabilities: at ``|s| = 1e4`` it
is 6e-4, at ``1e8`` the probabilities are noise. So the engine bounds the scores of a call
(:func:`score_bound`: ``scale * max|q| * max|k| + max|bias|``, no score exceeds it) and computes
in float64 when the bound exceeds ``FP32_MAX_LOGIT`` (products of float32 numbers are exact in
float64, so the scores are then right to ``1e-16 * |s|``). The backward recomputes every score
with the same kernel call on the same operands as the forward (bit for bit), and keeps ``m`` (a
score itself) apart from ``l``: folding them into ``lse`` rounds ``log l`` by up to half a unit
in the last place of ``|m|``. torch's fused flash-attention CPU kernels recompute scores in their
own blocking from their own ``lse``, so they run only float32 calls within ``FP32_MAX_LOGIT``. Each part's working set is bounded by the plan's
chunking and by ``_CELLS`` below.
"""

from __future__ import annotations

import warnings

import torch

from graphattn._random import hash_uniform
from graphattn.nn.plan import DenseGroup, SparsePart, TilingPlan

__all__ = ["GraphAttentionFunction", "engine_attention", "attention_weights", "score_bound", "lse_of",
           "FP32_MAX_LOGIT"]

_CELLS = 1 << 20  # score cells per dense chunk (4 MB in fp32): a chunk's scores stay in cache


class _Chunk:
    """One chunk ``[g0, g1)`` of a dense group: its operands and the writes of its results.

    Where the group's query blocks are consecutive and their key tiles a sliding window (a band's
    middle; :attr:`DenseGroup.k_offset`) and every row and key of the chunk lies inside the
    tensors, the operands are strided views of ``q``, ``k``, ``v`` (no copies: the overlapping
    key windows share memory) and results are written to and added into row ranges; otherwise
    they are gathered by index, with the rows of a partial last block clamped and dropped.
    """

    def __init__(self, group: DenseGroup, g0: int, g1: int, T: int, nq: int, nk: int, fast: bool):
        self.group, self.g0, self.g1, self.T, self.fast = group, g0, g1, T, fast
        self.G, self.c = g1 - g0, group.kblocks.shape[1]
        self.cT = self.c * T
        if fast:
            self.q0 = (group.q_start + g0) * T
            self.k0 = (group.q_start + g0 + group.k_offset) * T
        else:
            ar = torch.arange(T, device=group.qblocks.device)
            self.qraw = group.qblocks[g0:g1, None] * T + ar  # [G, T]
            self.kraw = (group.kblocks[g0:g1, :, None] * T + ar).reshape(self.G, -1)  # [G, cT]
            self.qc, self.kc = self.qraw.clamp_max(nq - 1), self.kraw.clamp_max(nk - 1)
            self.valid = self.qraw < nq  # rows clamped from a partial block: dropped
            self.ok = self.valid.reshape(-1)
            self.rows = self.qraw.reshape(-1)[self.ok]

    # ---- operands, [G, H, T, X] and [G, H, cT, X]
    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return x[self.q0:self.q0 + self.G * self.T].unflatten(0, (self.G, self.T)).transpose(1, 2)
        return x[self.qc].transpose(1, 2)

    def keys_of(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:  # the overlapping windows as one strided view
            s0 = x.stride(0)
            view = x.as_strided((self.G, self.cT) + tuple(x.shape[1:]), (self.T * s0,) + tuple(x.stride()),
                                x.storage_offset() + self.k0 * s0)
            return view.transpose(1, 2)
        return x[self.kc].transpose(1, 2)

    def query_ids(self) -> torch.Tensor:
        if self.fast:
            return torch.arange(self.q0, self.q0 + self.G * self.T, device=self.group.qblocks.device).view(self.G, self.T)
        return self.qraw

    def key_ids(self) -> torch.Tensor:
        if self.fast:
            dev = self.group.qblocks.device
            return (self.k0 + torch.arange(self.G, device=dev)[:, None] * self.T
                    + torch.arange(self.cT, device=dev))
        return self.kraw

    @property
    def mask(self) -> torch.Tensor:
        return self.group.mask[self.g0:self.g1]

    def additive_mask(self, dtype) -> torch.Tensor:
        """The mask as ``0 / -inf`` scores (a shared mask is made once and cached on the group)."""
        m = self.mask
        if m.shape[0] > 1 and m.stride(0) == 0:
            cache = self.group.__dict__.setdefault("_additive", {})
            if dtype not in cache:
                cache[dtype] = torch.zeros(m[:1].shape, dtype=dtype, device=m.device).masked_fill_(~m[:1], float("-inf"))
            return cache[dtype].expand(m.shape)
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))

    def row_any(self, heads: int) -> torch.Tensor:
        """[G, H, T]: the rows with a key in this group."""
        return self.group.row_any[self.g0:self.g1].expand(-1, heads, -1)

    @property
    def every_row(self) -> bool:
        """Every row of the group has a key in it (then no row needs masking out)."""
        flag = self.group.__dict__.get("_every_row")
        if flag is None:
            ra = self.group.row_any
            flag = self.group.__dict__["_every_row"] = bool((ra[:1] if ra.shape[0] > 1 and ra.stride(0) == 0
                                                             else ra).all())
        return flag

    # ---- results back
    def write_rows(self, dst: torch.Tensor, val: torch.Tensor) -> None:
        """``dst`` rows of the chunk's queries = ``val`` ([G, H, T, ...] -> [N, H, ...])."""
        val = val.transpose(1, 2)
        if self.fast:
            dst[self.q0:self.q0 + self.G * self.T] = val.reshape((-1,) + tuple(dst.shape[1:]))
        else:
            dst[self.rows] = val.reshape((-1,) + tuple(dst.shape[1:]))[self.ok]

    def add_rows(self, dst: torch.Tensor, val: torch.Tensor) -> None:
        val = val.transpose(1, 2)
        if self.fast:
            dst[self.q0:self.q0 + self.G * self.T] += val.reshape((-1,) + tuple(dst.shape[1:]))
        else:
            val = val * self.valid.view(self.G, self.T, *([1] * (val.dim() - 2)))
            dst.index_add_(0, self.qc.reshape(-1), val.reshape((-1,) + tuple(dst.shape[1:])))

    def add_keys(self, dst: torch.Tensor, val: torch.Tensor) -> None:
        """``dst`` rows of the chunk's keys += ``val`` ([G, H, cT, X]); overlapping windows add up."""
        val = val.transpose(1, 2)  # [G, cT, H, X]
        if self.fast:  # one slice per key tile slot: slot s of block g is key block g + s
            val = val.unflatten(1, (self.c, self.T))
            for s in range(self.c):
                a = self.k0 + s * self.T
                dst[a:a + self.G * self.T] += val[:, s].reshape((-1,) + tuple(dst.shape[1:]))
        else:
            dst.index_add_(0, self.kc.reshape(-1), val.reshape((-1,) + tuple(dst.shape[1:])))

    def edge_range(self) -> tuple[int, int]:
        """The group's edges (``pos``) inside this chunk (for the edge biases)."""
        cells = self.T * self.cT
        lo = int(torch.searchsorted(self.group.pos, self.g0 * cells))
        hi = int(torch.searchsorted(self.group.pos, self.g1 * cells))
        return lo, hi


def _fast_range(group: DenseGroup, T: int, nq: int, nk: int) -> tuple[int, int]:
    """The blocks ``[a, b)`` of a group whose chunk operands can be strided views."""
    if group.q_start is None or group.k_offset is None:
        return 0, 0
    G, c = group.kblocks.shape
    first = group.q_start + group.k_offset  # key block of block 0's first window slot
    a = max(0, -first)
    b = min(G, nq // T - group.q_start, nk // T - first - c + 1)
    return a, max(a, b)


def _dense_chunks(group: DenseGroup, tile: int, heads: int, nq: int, nk: int):
    """The chunks of a group: at most ``_CELLS`` score cells each (heads included), the view-able
    middle apart from the gathered borders."""
    G, c = group.kblocks.shape
    step = max(1, _CELLS // (tile * c * tile * heads))
    a, b = _fast_range(group, tile, nq, nk)
    for lo, hi, fast in ((0, a, False), (a, b, True), (b, G, False)):
        for g0 in range(lo, hi, step):
            yield _Chunk(group, g0, min(hi, g0 + step), tile, nq, nk, fast)


def _dense_scores(ch: _Chunk, q, k, bias, scale):
    """Masked scores [G, H, T, cT] (-inf off the graph) of one dense chunk, with Q and K."""
    Qg, Kg = ch.rows_of(q), ch.keys_of(k)  # [G, H, T, D], [G, H, cT, D]
    S = torch.matmul(Qg, Kg.transpose(-1, -2)).mul_(scale)
    if bias is not None:
        G, H, T, CT = S.shape
        lo, hi = ch.edge_range()
        add = torch.zeros(G * T * CT, H, dtype=S.dtype, device=S.device)
        add[ch.group.pos[lo:hi] - ch.g0 * T * CT] = bias[ch.group.edge_id[lo:hi]].to(S.dtype)
        S.add_(add.view(G, T, CT, H).permute(0, 3, 1, 2))
    S.masked_fill_(~ch.mask, float("-inf"))
    return S, Qg, Kg


# On CPU, dense tiles without bias or dropout run through torch's fused flash-attention CPU
# kernels (forward returns the log-sum-exp; backward takes the *global* out and lse, so it yields
# exactly this part's share of the gradients). They are ~1.5x faster than the tile matmuls
# above; the generic path remains for bias, dropout, other devices and torch builds without them.
_FLASH_CPU = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu") and hasattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


# Score bound up to which float32 scores keep the probabilities within 1e-4 of float64 (the
# rounding of |s| <= 1024 is <= 6e-5; measured gradient errors relative to their max: 1.3e-5 at
# |s| = 300, 4.5e-5 at 4.8e3 and 6.4e-4 at 1.9e4, band radius 40, head dim 64).
FP32_MAX_LOGIT = 1024.0


def score_bound(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> float:
    """``|scale| * max_h (max_i |q_ih| * max_j |k_jh|) + max |finite bias|``: no score of the
    call exceeds it in magnitude (Cauchy-Schwarz). Norms in float32 at least, so half inputs do
    not overflow; ``inf`` when a norm overflows, ``nan`` when an input holds NaN."""
    bound = 0.0
    if q.numel() and k.numel():
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        qn = torch.linalg.vector_norm(q.detach(), dim=-1, dtype=dtype).amax(0)
        kn = torch.linalg.vector_norm(k.detach(), dim=-1, dtype=dtype).amax(0)
        bound = float((qn * kn).amax()) * abs(scale)
    if bias is not None and bias.numel():
        finite = torch.where(torch.isinf(bias), torch.zeros_like(bias), bias.detach())
        bound += float(finite.abs().amax())
    return bound


def _use_flash(q, v, bias, dropout_p) -> bool:
    return (_FLASH_CPU and q.device.type == "cpu" and q.dtype == torch.float32 and bias is None
            and not dropout_p and q.shape[-1] == v.shape[-1])


def _keep_mask(key, q_ids, k_ids, num_keys, heads, p, shape_hqk):
    """Dropout keep-mask from a counter-based hash of (query, key, head): reproducible in the
    backward without storing it, identical on every device."""
    code = q_ids[..., :, None] * num_keys + k_ids[..., None, :]  # [..., Q, K]
    h = torch.arange(heads, device=code.device).view(1, heads, 1, 1)
    bits = hash_uniform(key, code.unsqueeze(1), h)
    return (bits >= int(p * 2**32)).view(shape_hqk)


def _csr(crow, col, values, shape):
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on stable ops only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _SparseCall:
    """Per-call state of the CSR part: the edge rows, and each head's contiguous operands, made
    when that head runs (one head's copies at a time, not ``[H, N, D]`` copies of q, k and v)."""

    def __init__(self, part: SparsePart, q, k, nq: int, nk: int):
        self.part, self.nq, self.nk = part, nq, nk
        self.q, self.k = q, k
        self.lengths = part.crow.diff()
        self.rows = torch.repeat_interleave(torch.arange(nq, device=q.device), self.lengths,
                                            output_size=part.col.numel())
        # Zeros, not empty: sampled_addmm with beta=0 still propagates NaN from its input values.
        self.pattern = _csr(part.crow, part.col, torch.zeros(part.col.numel(), dtype=q.dtype, device=q.device),
                            (nq, nk))
        self._head = None

    def head(self, h: int):
        """``(q_h [Nq, D], k_h [Nk, D])`` contiguous (kept while head ``h`` runs)."""
        if self._head is None or self._head[0] != h:
            self._head = (h, self.q[:, h].contiguous(), self.k[:, h].contiguous())
        return self._head[1], self._head[2]

    def scores(self, h: int, bias, scale) -> torch.Tensor:
        """Scores of the sparse edges for head ``h`` (``-inf`` where the head layout excludes)."""
        qh, kh = self.head(h)
        s = torch.sparse.sampled_addmm(self.pattern, qh, kh.t(), beta=0.0, alpha=scale).values()
        if bias is not None:
            s = s + bias[self.part.edge_id, h]
        if self.part.head_allowed.numel():
            s = s.masked_fill(~self.part.head_allowed[:, h], float("-inf"))
        return s

    def matmul(self, values, dense) -> torch.Tensor:
        """``csr(values) @ dense``: ``[Nq, Nk] x [Nk, X]``."""
        return _csr(self.part.crow, self.part.col, values, (self.nq, self.nk)) @ dense

    def matmul_t(self, values, dense) -> torch.Tensor:
        """``csr(values)^T @ dense``: ``[Nk, Nq] x [Nq, X]`` through the stored transpose."""
        return _csr(self.part.t_crow, self.part.t_col, values[self.part.t_perm], (self.nk, self.nq)) @ dense

    def keep(self, key, h, p) -> torch.Tensor:
        code = self.rows * self.nk + self.part.col
        return (hash_uniform(key, code, h) >= int(p * 2**32)).to(self.q.dtype) / (1 - p)


def _merge(out, m, l, o_part, m_part, l_part):
    """Merge a part's (unnormalised out, max, sum) into the running state, in place (``o_part``
    is consumed)."""
    m_new = torch.maximum(m, m_part)
    safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    a = torch.exp(m - safe)
    b = torch.exp(m_part - safe)
    m.copy_(m_new)
    l.mul_(a).add_(l_part * b)
    out.mul_(a[..., None]).add_(o_part.mul_(b[..., None]))


def forward(q, k, v, bias, plan: TilingPlan, scale: float, dropout_p: float, drop_key: int, flash: bool):
    """``(out, m, l)``: the normalised output and each query's score max and sum of
    ``exp(s - m)`` (``m = -inf``, ``l = 0`` for a query without keys)."""
    nq, H = q.shape[0], q.shape[1]
    nk, T = k.shape[0], plan.tile
    acc = q.dtype
    out = torch.zeros(nq, H, v.shape[-1], dtype=acc, device=q.device)
    m = torch.full((nq, H), float("-inf"), dtype=acc, device=q.device)
    l = torch.zeros(nq, H, dtype=acc, device=q.device)
    for group in plan.dense:
        for ch in _dense_chunks(group, T, H, nq, nk):
            # Every query block belongs to one dense group and dense parts run first, so a row's
            # dense state is written, not merged.
            if flash:
                og, lse_g = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    ch.rows_of(q), ch.keys_of(k), ch.keys_of(v), attn_mask=ch.additive_mask(q.dtype), scale=scale)
                if ch.every_row:
                    ch.write_rows(out, og)
                    ch.write_rows(m, lse_g)
                    ch.write_rows(l, torch.ones_like(lse_g))
                else:
                    has = ch.row_any(H)  # [G, H, T]: rows with dense keys
                    ch.write_rows(out, og * has[..., None])
                    ch.write_rows(m, torch.where(has, lse_g, float("-inf")))
                    ch.write_rows(l, has.to(l.dtype))
                continue
            S, _, _ = _dense_scores(ch, q, k, bias, scale)
            mp = S.amax(-1)  # [G, H, T]
            safe = torch.where(torch.isinf(mp), torch.zeros_like(mp), mp)
            P = S.sub_(safe[..., None]).exp_()
            lp = P.sum(-1)
            if dropout_p:
                P = P * _keep_mask(drop_key, ch.query_ids(), ch.key_ids(), nk, H, dropout_p, P.shape) / (1 - dropout_p)
            ch.write_rows(out, torch.matmul(P, ch.keys_of(v)))  # [G, H, T, Dv]
            ch.write_rows(m, mp)
            ch.write_rows(l, lp)
    if plan.sparse is not None:
        sp = _SparseCall(plan.sparse, q, k, nq, nk)
        for h in range(H):  # each head's part merged into its state at once: no [N, H, Dv] buffers
            s = sp.scores(h, bias, scale)
            mx = torch.segment_reduce(s, "max", lengths=sp.lengths)  # -inf on rows without edges
            safe = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
            e = torch.exp_(s - safe[sp.rows])
            lp = torch.segment_reduce(e, "sum", lengths=sp.lengths)
            if dropout_p:
                e = e * sp.keep(drop_key, h, dropout_p)
            o = sp.matmul(e, v[:, h].contiguous())
            if plan.dense:
                _merge(out[:, h], m[:, h], l[:, h], o, mx, lp)
            else:
                out[:, h], m[:, h], l[:, h] = o, mx, lp
    # Rows without keys have l == 0 and out == 0: dividing by 1 there leaves the zeros.
    out.div_(torch.where(l > 0, l, torch.ones_like(l))[..., None])
    return out, m, l


def lse_of(m: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """``m + log l``, ``-inf`` where ``l == 0`` (a query without keys)."""
    has = l > 0
    return torch.where(has, m + torch.log(torch.where(has, l, torch.ones_like(l))), torch.full_like(m, float("-inf")))


def backward(grad_out, grad_lse, q, k, v, bias, out, m, l, plan: TilingPlan, scale, dropout_p, drop_key, flash: bool):
    nq, H = q.shape[0], q.shape[1]
    nk, T = k.shape[0], plan.tile
    Dv = v.shape[-1]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dbias = torch.zeros(plan.num_edges, H, dtype=q.dtype, device=q.device) if bias is not None else None
    delta = (grad_out * out).sum(-1)  # [nq, H]
    has = l > 0
    if grad_lse is not None:
        # d lse / d s_ij = P_ij, so the lse gradient adds P * dlse to dS: delta - dlse. torch's
        # flash backward computes delta itself, so it cannot take it.
        delta = delta - torch.where(has, grad_lse, torch.zeros_like(grad_lse))
        flash = False
    # P = exp(s - m) / l; rows without keys get m = +inf and 1/l = 0, so P = 0 there.
    m_safe = torch.where(has, m, torch.full_like(m, float("inf")))
    inv_l = torch.where(has, 1.0 / torch.where(has, l, torch.ones_like(l)), torch.zeros_like(l))
    lse_safe = torch.where(has, lse_of(m, l), torch.full_like(m, float("inf")))
    for group in plan.dense:
        for ch in _dense_chunks(group, T, H, nq, nk):
            if flash:
                # Every operand goes in as a view (the kernel takes strided inputs).
                dO, O = ch.rows_of(grad_out), ch.rows_of(out)
                if not ch.fast:  # rows clamped from a partial block: no gradient
                    valid = ch.valid[:, None, :, None]
                    dO, O = dO * valid, O * valid
                dQg, dKg, dVg = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                    dO, ch.rows_of(q), ch.keys_of(k), ch.keys_of(v), O,
                    ch.rows_of(lse_safe.unsqueeze(-1)).squeeze(-1), 0.0, False,
                    attn_mask=ch.additive_mask(q.dtype), scale=scale)
                ch.add_rows(dq, dQg)
                ch.add_keys(dk, dKg)
                ch.add_keys(dv, dVg)
                continue
            S, Qg, Kg = _dense_scores(ch, q, k, bias, scale)
            M = ch.rows_of(m_safe.unsqueeze(-1)).squeeze(-1)  # [G, H, T]
            P = S.sub_(M[..., None]).exp_().mul_(ch.rows_of(inv_l.unsqueeze(-1)))
            if not ch.fast:
                P.masked_fill_(~ch.valid[:, None, :, None], 0.0)  # rows clamped from a partial block
            dO = ch.rows_of(grad_out)  # [G, H, T, Dv]
            Vg = ch.keys_of(v)
            if dropout_p:
                keep = _keep_mask(drop_key, ch.query_ids(), ch.key_ids(), nk, H, dropout_p, P.shape) / (1 - dropout_p)
                Pd = P * keep
            else:
                Pd = P
            ch.add_keys(dv, torch.matmul(Pd.transpose(-1, -2), dO))  # [G, H, cT, Dv]
            dP = torch.matmul(dO, Vg.transpose(-1, -2))
            if dropout_p:
                dP = dP * keep
            dS = P.mul_(dP.sub_(ch.rows_of(delta.unsqueeze(-1))))  # [G, H, T, cT]
            if dbias is not None:
                G, _, _, CT = dS.shape
                lo, hi = ch.edge_range()
                flat = dS.permute(0, 2, 3, 1).reshape(-1, H)
                dbias[group.edge_id[lo:hi]] = flat[group.pos[lo:hi] - ch.g0 * T * CT]
            ch.add_rows(dq, torch.matmul(dS, Kg).mul_(scale))  # [G, H, T, D]
            ch.add_keys(dk, torch.matmul(dS.transpose(-1, -2), Qg).mul_(scale))  # [G, H, cT, D]
    if plan.sparse is not None:
        sp = _SparseCall(plan.sparse, q, k, nq, nk)
        for h in range(H):
            s = sp.scores(h, bias, scale)
            P = torch.exp(s - m_safe[sp.rows, h]) * inv_l[sp.rows, h]
            keep = sp.keep(drop_key, h, dropout_p) if dropout_p else None
            Pd = P if keep is None else P * keep
            dO = grad_out[:, h].contiguous()
            dv[:, h] += sp.matmul_t(Pd, dO)
            dP = torch.sparse.sampled_addmm(sp.pattern, dO, v[:, h].contiguous().t(), beta=0.0).values()
            if keep is not None:
                dP = dP * keep
            dS = P * (dP - delta[sp.rows, h])
            if dbias is not None:
                dbias[plan.sparse.edge_id, h] = dS
            qh, kh = sp.head(h)
            dq[:, h] += sp.matmul(dS, kh) * scale
            dk[:, h] += sp.matmul_t(dS, qh) * scale
    return dq, dk, dv, dbias


class GraphAttentionFunction(torch.autograd.Function):
    """``out = softmax_over_edges(q k^T * scale + bias) v`` with a recomputing backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, plan, scale, dropout_p, drop_key, bound=None):
        if bound is None:
            bound = score_bound(q, k, scale, bias)
        flash = _use_flash(q, v, bias, dropout_p) and bound <= FP32_MAX_LOGIT
        out, m, l = forward(q, k, v, bias, plan, scale, dropout_p, drop_key, flash)
        ctx.save_for_backward(q, k, v, bias, out, m, l)
        ctx.plan, ctx.scale, ctx.dropout_p, ctx.drop_key, ctx.flash = plan, scale, dropout_p, drop_key, flash
        ctx.set_materialize_grads(False)
        return out, lse_of(m, l)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, bias, out, m, l = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
        dq, dk, dv, dbias = backward(grad_out, grad_lse, q, k, v, bias, out, m, l, ctx.plan,
                                     ctx.scale, ctx.dropout_p, ctx.drop_key, ctx.flash)
        return dq, dk, dv, (dbias if ctx.needs_input_grad[3] else None), None, None, None, None, None


def engine_attention(q, k, v, bias, plan: TilingPlan, scale: float, dropout_p: float, drop_key: int,
                     bound: float | None = None):
    """The torch backend: ``(out in q's dtype, lse in the accumulation dtype)``. Half precision
    and float32 are computed in float32, or in float64 when the call's :func:`score_bound`
    exceeds ``FP32_MAX_LOGIT``; float64 in float64."""
    if bound is None:
        bound = score_bound(q, k, scale, bias)
    acc = torch.float64 if q.dtype == torch.float64 or not bound <= FP32_MAX_LOGIT else torch.float32
    out, lse = GraphAttentionFunction.apply(q.to(acc), k.to(acc), v.to(acc), None if bias is None else bias.to(acc),
                                            plan, scale, dropout_p, drop_key, bound)
    return out.to(q.dtype), lse


def attention_weights(q, k, bias, scale, lse, edge_index, head_mask=None) -> torch.Tensor:
    """Softmax weights ``[E, H]`` of every edge (before dropout), from the forward's lse.

    Computed per edge in chunks by gathering ``q[i]`` and ``k[j]``: O(E * H * D) work, O(chunk)
    extra memory. Not differentiable (the returned tensor is detached)."""
    E = edge_index.shape[1]
    H = q.shape[1]
    w = torch.empty(E, H, dtype=q.dtype, device=q.device)
    step = max(1, (1 << 22) // max(1, H * q.shape[-1]))
    with torch.no_grad():
        for e0 in range(0, E, step):
            j, i = edge_index[0, e0:e0 + step], edge_index[1, e0:e0 + step]
            s = (q[i] * k[j]).sum(-1) * scale
            if bias is not None:
                s = s + bias[e0:e0 + step].to(s.dtype)
            w[e0:e0 + step] = torch.exp(s - lse[i])
        if head_mask is not None:
            w.masked_fill_(~head_mask, 0.0)
    return w
