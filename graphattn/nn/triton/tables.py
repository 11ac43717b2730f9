"""A tiling plan in the kernels' layout: int32 ids, uint8 bitmaps, work items (internal).

Derived once per (plan, device) and cached on the plan.
"""

from __future__ import annotations

import math

import torch

from graphattn.nn._tiles import dense_edge_map, dense_tiles
from graphattn.nn.plan import TilingPlan
from graphattn.nn.triton.launch import next_pow2

__all__ = ["MAX_TILES", "MAX_CHUNKS", "Work", "Tables", "get_tables", "pointer"]

# A work item walks at most this many dense tiles / sparse chunks; longer blocks and rows are split.
MAX_TILES, MAX_CHUNKS = 32, 32


class Work:
    """Work items over a CSR-like structure: unit ``u`` owns entries ``ptr[u]..ptr[u+1]``.

    Units with at most ``limit`` entries are one item each (``unit``, ``start``, ``stop``); a
    longer unit (a global row or key, a hub node) is cut into segments of ``limit`` entries that
    run as separate programs and write partial results, merged afterwards (flash-decoding's
    split-K), so no program walks thousands of tiles while the others idle. ``seg_owner``:
    index into ``long_units`` of each segment."""

    def __init__(self, units: torch.Tensor, ptr: torch.Tensor, limit: int):
        ptr = ptr.long()
        lo, hi = ptr[:-1], ptr[1:]
        long = (hi - lo) > limit
        i32 = torch.int32
        self.unit, self.start, self.stop = units[~long].to(i32), lo[~long].to(i32), hi[~long].to(i32)
        self.long_units = units[long].long()
        nseg = -(-(hi[long] - lo[long]) // limit)
        owner = torch.repeat_interleave(torch.arange(nseg.numel(), device=ptr.device), nseg)
        first = torch.cumsum(nseg, 0) - nseg
        k = torch.arange(owner.numel(), device=ptr.device) - first[owner]
        seg_start = lo[long][owner] + k * limit
        self.seg_owner = owner
        self.seg_unit = self.long_units[owner].to(i32)
        self.seg_start = seg_start.to(i32)
        self.seg_stop = torch.minimum(seg_start + limit, hi[long][owner]).to(i32)

    @property
    def items(self) -> int:
        return int(self.unit.numel())

    @property
    def segments(self) -> int:
        return int(self.seg_unit.numel())


class Tables:
    """Index tensors of a plan in the kernels' layout (int32 ids, uint8 bitmaps, work items)."""

    def __init__(self, plan: TilingPlan, device):
        self.plan, self.device = plan, device
        T = plan.tile
        self.T, self.hm = T, 1 if plan.num_heads is None else plan.num_heads
        self.block_t = max(16, next_pow2(T))
        QB, KB = -(-plan.num_queries // T), -(-plan.num_keys // T)
        self.tiles = tiles = dense_tiles(plan, device)
        self.n_tiles = tiles.count
        i32 = torch.int32
        if self.n_tiles:
            qblk, qcount = torch.unique_consecutive(tiles.tq, return_counts=True)
            kperm = torch.sort(tiles.tk * max(QB, 1) + tiles.tq).indices
            kblk, kcount = torch.unique_consecutive(tiles.tk[kperm], return_counts=True)
            self.qwork = Work(qblk, pointer(qcount), MAX_TILES)
            self.kwork = Work(kblk, pointer(kcount), MAX_TILES)
            self.kperm = kperm.to(i32)
            self.tq, self.tk = tiles.tq.to(i32), tiles.tk.to(i32)
            self.mask = tiles.mask.view(torch.uint8)  # [NT, Hm, T, T]
            self.full = tiles.mask.flatten(2).all(-1).to(torch.uint8).contiguous()  # [NT, Hm]
            # Every query (key) block with tiles is written by an item or by a merge.
            self.covers_q = qblk.numel() == QB
            self.covers_k = kblk.numel() == KB
        self._emap = None
        sp = plan.sparse
        self.csr, self.block_n = None, 16
        if sp is not None:
            ha = sp.head_allowed.to(device)
            ha = ha.to(torch.uint8).contiguous() if ha.numel() else torch.zeros(1, dtype=torch.uint8, device=device)
            perm = sp.t_perm.to(device)
            # Neighbour chunk: the mean row length rounded up to a power of two (masked lanes cost
            # no memory traffic; a second, nearly empty chunk would cost a full iteration).
            mean = sp.col.numel() / max(1, plan.num_queries)
            self.block_n = int(min(64, max(16, next_pow2(math.ceil(mean)))))
            limit = MAX_CHUNKS * self.block_n
            self.rwork = Work(torch.arange(plan.num_queries, device=device), sp.crow.to(device), limit)
            self.twork = Work(torch.arange(plan.num_keys, device=device), sp.t_crow.to(device), limit)
            self.csr = dict(
                col=sp.col.to(device, i32), eid=sp.edge_id.to(device, i32), ha=ha,
                tcol=sp.t_col.to(device, i32), teid=sp.edge_id.to(device)[perm].to(i32),
                tha=ha[perm].contiguous() if plan.num_heads is not None else ha)

    @property
    def emap(self) -> torch.Tensor:
        if self._emap is None:
            self._emap = dense_edge_map(self.plan, self.tiles, self.device)
        return self._emap

    def block_rows(self, blocks: torch.Tensor, n: int):
        """Rows ``[U, T]`` of blocks and which of them exist (``< n``)."""
        rows = blocks[:, None] * self.T + torch.arange(self.T, device=blocks.device)
        return rows, rows < n


def pointer(counts: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def get_tables(plan: TilingPlan, device) -> Tables:
    cache = plan.__dict__.setdefault("_triton_tables", {})
    key = (str(torch.device(device)), MAX_TILES, MAX_CHUNKS)
    if key not in cache:
        if plan.num_edges >= 2**31 - 1:
            raise ValueError(f"expected fewer than 2**31 edges for the Triton kernels, got {plan.num_edges}")
        cache[key] = Tables(plan, device)
    return cache[key]
