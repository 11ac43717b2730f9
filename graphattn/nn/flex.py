"""FlexAttention backend: torch's ``flex_attention`` with a BlockMask built from the tiling plan.

FlexAttention (Dong et al. 2024, arXiv:2412.05496) runs a fused flash-attention kernel over the
key blocks a :class:`~torch.nn.attention.flex_attention.BlockMask` lists per query block; blocks
marked *full* skip the ``mask_mod``. The block mask here comes from the plan's tiles: a block is
listed when it holds an edge (the plan's dense tiles and the tiles its sparse edges fall in) and
is full when every cell is an edge; ``mask_mod`` reads the plan's in-tile bitmaps, and
``score_mod`` adds the edge bias through the cell -> edge id map. So the result is exact for
every graph, per-head layouts and bipartite graphs included; it is fast only where the edges
fill their tiles (band, block, BigBird), since a graph without locality (random) lists almost
every block.

Limits (each raises with the reason, see :func:`unavailable_reason`): no attention dropout
(FlexAttention has none); on CPU torch has no FlexAttention backward, and the forward runs
FlexAttention's unfused reference (``O(Nq * Nk)`` memory: for tests); a bias gradient flows
through ``score_mod`` as far as torch supports gradients of captured tensors. The lookup table
from (query block, key block) to tile costs ``4 * (Nq / T) * (Nk / T)`` bytes (1 GiB at 1M
tokens and ``T = 64``).
"""

from __future__ import annotations

import math
import warnings

import torch

from graphattn.nn._tiles import dense_edge_map, dense_tiles, sparse_tiles
from graphattn.nn.plan import TilingPlan

__all__ = ["unavailable_reason", "flex_graph_attention", "block_mask"]

_TABLE_LIMIT = 1 << 28  # tile lookup entries (1 GiB of int32)
_BITMAP_LIMIT = 2 << 30  # bytes of tile bitmaps for the sparse edges


def _flex():
    from torch.nn.attention import flex_attention as fa

    return fa


def unavailable_reason(q: torch.Tensor, *, plan: TilingPlan, bias=None, dropout_p: float = 0.0,
                       needs_grad: bool = False) -> str | None:
    """Why the FlexAttention backend cannot run this call exactly, or None when it can."""
    try:
        _flex()
    except ImportError as exc:
        return f"torch.nn.attention.flex_attention is not available in torch {torch.__version__} ({exc})"
    if dropout_p > 0:
        return "FlexAttention has no attention dropout (use Backend.TRITON or Backend.TORCH)"
    if q.device.type == "cpu" and needs_grad:
        return "torch has no FlexAttention backward on CPU (run under torch.no_grad() or use another backend)"
    if q.device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on CPU and CUDA here, got {q.device}"
    T = plan.tile
    entries = -(-plan.num_queries // T) * -(-plan.num_keys // T)
    if entries > _TABLE_LIMIT:
        return (f"the tile lookup table would hold {entries:,} entries (> {_TABLE_LIMIT:,}); use a larger "
                f"tile or Backend.TRITON")
    if plan.sparse is not None:
        # Upper bound: one T x T bitmap per sparse edge.
        need = min(plan.sparse_edges, entries) * T * T * (1 if plan.num_heads is None else plan.num_heads)
        if need > _BITMAP_LIMIT:
            return (f"the plan's {plan.sparse_edges:,} sparse edges would need up to {need / 2**30:.1f} GiB of "
                    f"tile bitmaps (FlexAttention has no CSR path; use Backend.TRITON)")
    return None


class _FlexTables:
    """The plan's tiles (dense and sparse) for FlexAttention, at flex block size ``block``."""

    def __init__(self, plan: TilingPlan, device, block: int):
        T = plan.tile
        self.plan, self.device, self.T, self.block = plan, device, T, block
        self.hm = 1 if plan.num_heads is None else plan.num_heads
        dense = dense_tiles(plan, device)
        sparse = sparse_tiles(plan, device)
        tq, tk, mask = [dense.tq], [dense.tk], [dense.mask]
        self._emaps = [lambda: dense_edge_map(plan, dense, device)]
        if sparse is not None:
            tq.append(sparse[0])
            tk.append(sparse[1])
            mask.append(sparse[2])
            self._emaps.append(lambda: sparse[3])
        self.tq, self.tk = torch.cat(tq), torch.cat(tk)
        self.mask = torch.cat(mask)  # bool [NT, Hm, T, T]
        QB, KB = -(-plan.num_queries // T), -(-plan.num_keys // T)
        self.tile_of = torch.full((QB, KB), -1, dtype=torch.int32, device=device)
        self.tile_of[self.tq, self.tk] = torch.arange(self.tq.numel(), dtype=torch.int32, device=device)
        self._emap = None
        self.block_mask = self._block_mask()

    @property
    def emap(self) -> torch.Tensor:
        if self._emap is None:
            self._emap = torch.cat([f() for f in self._emaps])
        return self._emap

    def _block_mask(self):
        fa = _flex()
        plan, T, B, hm, dev = self.plan, self.T, self.block, self.hm, self.device
        r = B // T
        QBf, KBf = -(-plan.num_queries // B), -(-plan.num_keys // B)
        code = (self.tq // r) * KBf + self.tk // r  # flex block of each tile
        full_tile = self.mask.flatten(2).all(-1)  # [NT, Hm]
        nonempty = self.mask.flatten(2).any(-1)  # [NT, Hm]
        cells = QBf * KBf
        h_off = torch.arange(hm, device=dev)[None, :] * cells
        n_full = torch.bincount((code[:, None] + h_off)[full_tile], minlength=hm * cells).view(hm, cells)
        n_any = torch.bincount((code[:, None] + h_off)[nonempty], minlength=hm * cells).view(hm, cells)
        full = n_full == r * r
        partial = (n_any > 0) & ~full

        def lists(sel):  # [Hm, QBf*KBf] bool -> (counts [1, Hm, QBf], indices [1, Hm, QBf, max])
            sel = sel.view(hm, QBf, KBf)
            counts = sel.sum(-1).to(torch.int32)
            # Stable sort puts each row's selected key blocks first, in increasing order. Flex
            # wants the indices as wide as the number of key blocks.
            order = torch.sort((~sel).to(torch.int8), dim=-1, stable=True).indices
            return counts[None], order.to(torch.int32)[None].contiguous()

        kv_num, kv_idx = lists(partial)
        full_num, full_idx = lists(full)
        return fa.BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B,
                                           mask_mod=self.mask_mod(), seq_lengths=(plan.num_queries, plan.num_keys))

    def _lookup(self, q_idx, kv_idx):
        nq, nk, T = self.plan.num_queries, self.plan.num_keys, self.T
        qc, kc = q_idx.clamp(0, nq - 1), kv_idx.clamp(0, nk - 1)  # flex may probe padding positions
        t = self.tile_of[qc // T, kc // T]
        return t, qc % T, kc % T, (q_idx < nq) & (kv_idx < nk) & (t >= 0)

    def mask_mod(self):
        bits, per_head = self.mask, self.plan.num_heads is not None

        def mask_mod(b, h, q_idx, kv_idx):
            t, qr, kr, ok = self._lookup(q_idx, kv_idx)
            return ok & bits[t.clamp(min=0), h if per_head else 0, qr, kr]

        return mask_mod

    def score_mod(self, bias: torch.Tensor):
        emap = self.emap

        def score_mod(score, b, h, q_idx, kv_idx):
            t, qr, kr, ok = self._lookup(q_idx, kv_idx)
            e = emap[t.clamp(min=0), qr, kr]
            add = bias[e.clamp(min=0), h].to(score.dtype)
            return score + torch.where(ok & (e >= 0), add, torch.zeros_like(add))

        return score_mod


def _tables(plan: TilingPlan, device) -> _FlexTables:
    device = torch.device(device)
    block = 128 if device.type == "cuda" and 128 % plan.tile == 0 else plan.tile
    cache = plan.__dict__.setdefault("_flex_tables", {})
    key = (str(device), block)
    if key not in cache:
        cache[key] = _FlexTables(plan, device, block)
    return cache[key]


def block_mask(plan: TilingPlan, device="cpu"):
    """The FlexAttention BlockMask of ``plan`` (cached on the plan per device)."""
    return _tables(plan, device).block_mask


_compiled = None


def _flex_fn(device):
    global _compiled
    fa = _flex()
    if torch.device(device).type != "cuda":
        return fa.flex_attention  # eager: the unfused reference (for tests)
    if _compiled is None:
        _compiled = torch.compile(fa.flex_attention, dynamic=False)
    return _compiled


def flex_graph_attention(q, k, v, plan: TilingPlan, *, bias=None, scale=None):
    """Exact graph attention over ``plan`` with FlexAttention: ``(out [Nq, H, Dv], lse [Nq, H])``
    (lse float32, natural log, ``-inf`` for queries without keys, whose output is zero)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, bias))
    why = unavailable_reason(q, plan=plan, bias=bias, needs_grad=needs_grad)
    if why:
        raise RuntimeError(f"the FlexAttention backend cannot run: {why}")
    if not needs_grad:  # torch's CPU check refuses inputs that require grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
        bias = None if bias is None else bias.detach()
    tabs = _tables(plan, q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fa = _flex()
    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    kw = dict(score_mod=None if bias is None else tabs.score_mod(bias), block_mask=tabs.block_mask, scale=scale)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        if hasattr(fa, "AuxRequest"):
            out, aux = _flex_fn(q.device)(*args, **kw, return_aux=fa.AuxRequest(lse=True))
            lse = aux.lse
        else:  # torch < 2.9
            out, lse = _flex_fn(q.device)(*args, **kw, return_lse=True)
    return out[0].transpose(0, 1), lse[0].transpose(0, 1).float()
