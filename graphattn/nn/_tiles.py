"""Flat tile lists derived from a tiling plan, shared by the fused backends (internal).

The torch engine batches a plan's dense tiles by group (query blocks with the same tile count
``c``) because its matmuls need rectangular batches. A kernel loops over a variable number of
tiles per block instead, so the Triton and FlexAttention backends want one list of tiles sorted
by (query block, key block), with one ``[T, T]`` bitmap per tile and head layout, plus the
cell -> edge id map when a bias is given. Everything here is vectorised torch on the plan's
device; the results are cached on the plan by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphattn.nn.plan import TilingPlan

__all__ = ["DenseTiles", "dense_tiles", "dense_edge_map", "sparse_tiles"]


@dataclass
class DenseTiles:
    """The plan's dense tiles sorted by (query block, key block).

    tq, tk: int64 ``[NT]`` query / key block of each tile. mask: bool ``[NT, Hm, T, T]``.
    rank: int64 ``[NT]``: the sorted position of the tile that has position ``u`` in the
    plan's group-major order (group by group, then ``g * c + slot``).
    """

    tq: torch.Tensor
    tk: torch.Tensor
    mask: torch.Tensor
    rank: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.tq.numel())


def _heads(plan: TilingPlan) -> int:
    return 1 if plan.num_heads is None else plan.num_heads


def dense_tiles(plan: TilingPlan, device) -> DenseTiles:
    T, hm = plan.tile, _heads(plan)
    kb_count = max(1, -(-plan.num_keys // T))
    if not plan.dense:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return DenseTiles(empty, empty, torch.zeros(0, hm, T, T, dtype=torch.bool, device=device), empty)
    tq, tk, masks = [], [], []
    for g in plan.dense:
        G, c = g.kblocks.shape
        tq.append(g.qblocks.to(device).repeat_interleave(c))
        tk.append(g.kblocks.to(device).reshape(-1))
        # [G, Hm, T, c*T] -> [G*c, Hm, T, T]: one bitmap per (query block, key tile).
        masks.append(g.mask.to(device).reshape(G, hm, T, c, T).permute(0, 3, 1, 2, 4).reshape(G * c, hm, T, T))
    tq, tk = torch.cat(tq), torch.cat(tk)
    order = torch.sort(tq * kb_count + tk).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    return DenseTiles(tq[order], tk[order], torch.cat(masks)[order], rank)


def dense_edge_map(plan: TilingPlan, tiles: DenseTiles, device) -> torch.Tensor:
    """int32 ``[NT, T, T]``: the edge id of every cell of the dense tiles, -1 off the graph."""
    T = plan.tile
    emap = torch.full((tiles.count, T, T), -1, dtype=torch.int32, device=device)
    base = 0
    for g in plan.dense:
        G, c = g.kblocks.shape
        cT = c * T
        pos = g.pos.to(device)
        gi, rem = pos // (T * cT), pos % (T * cT)
        row, col = rem // cT, rem % cT
        u = base + gi * c + col // T
        emap.view(-1)[tiles.rank[u] * (T * T) + row * T + col % T] = g.edge_id.to(device, torch.int32)
        base += G * c
    return emap


def sparse_tiles(plan: TilingPlan, device):
    """The plan's sparse edges cut into ``T x T`` tiles (for backends without a CSR path).

    Returns ``(tq, tk, mask bool [NS, Hm, T, T], emap int32 [NS, T, T])``, tiles sorted by
    (query block, key block); ``None`` when the plan has no sparse edges."""
    sp = plan.sparse
    if sp is None:
        return None
    T, hm = plan.tile, _heads(plan)
    kb_count = max(1, -(-plan.num_keys // T))
    crow, col = sp.crow.to(device), sp.col.to(device)
    rows = torch.repeat_interleave(torch.arange(plan.num_queries, device=device), crow.diff(),
                                   output_size=col.numel())
    code = (rows // T) * kb_count + col // T
    uniq, inv = torch.unique(code, return_inverse=True)
    cell = (rows % T) * T + col % T
    mask = torch.zeros(uniq.numel(), hm, T * T, dtype=torch.bool, device=device)
    if plan.num_heads is None:
        mask[inv, 0, cell] = True
    else:
        allowed = sp.head_allowed.to(device)  # [Es, H]
        h = torch.arange(hm, device=device)
        mask[inv[:, None], h[None, :], cell[:, None]] = allowed
    emap = torch.full((uniq.numel(), T * T), -1, dtype=torch.int32, device=device)
    emap[inv, cell] = sp.edge_id.to(device, torch.int32)
    return uniq // kb_count, uniq % kb_count, mask.view(-1, hm, T, T), emap.view(-1, T, T)
