"""The tiling plan: how the engine walks an attention graph.

The adjacency (queries x keys) is cut into ``tile x tile`` tiles. A tile holding at least
``dense_threshold`` of its possible edges is *dense*: it runs as a dense tile matmul with an
in-tile mask. Every query block's dense tiles form one row of key tiles; query blocks with the
same number of dense tiles are batched into a :class:`DenseGroup`. The remaining edges are
*sparse*: they form one CSR matrix (:class:`SparsePart`) that runs through torch's sparse
kernels (``sampled_addmm`` for scores, ``spmm`` for outputs and gradients), which never
gather a per-edge ``[E, H, D]`` tensor.

Band, dilated, block, global, BigBird, Longformer, Star and sorted bucket graphs are almost all
dense tiles; an arbitrary GNN or random graph is almost all sparse edges. The plan only holds
index tensors, so it is device-agnostic (``plan.to(device)``) and can be consumed by a fused
kernel as well as by the torch engine. :func:`get_plan` caches it on an AttentionGraph, so a
training loop pays for it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from graphattn._validate import check_float, check_int

__all__ = ["DenseGroup", "SparsePart", "TilingPlan", "build_plan", "get_plan"]


@dataclass
class DenseGroup:
    """Query blocks that each attend ``c`` dense key tiles.

    qblocks: ``[G]`` query block ids. kblocks: ``[G, c]`` key block ids, increasing.
    pos: ``[Ed]`` flat positions of the group's edges in a ``[G, T, c*T]`` grid, increasing.
    edge_id: ``[Ed]`` the edge index (into the graph's edge list) of each position.
    mask: bool ``[G, Hm, T, c*T]`` (``Hm`` is 1, or the head count of a per-head layout).
    """

    qblocks: torch.Tensor
    kblocks: torch.Tensor
    pos: torch.Tensor
    edge_id: torch.Tensor
    mask: torch.Tensor


@dataclass
class SparsePart:
    """The edges outside dense tiles as a CSR matrix ``[Nq, Nk]`` (rows are queries), for the
    sparse kernels (``sampled_addmm``, ``spmm``), plus its transpose for the backward.

    crow ``[Nq + 1]``, col ``[Es]`` (keys), edge_id ``[Es]`` (index into the graph's edges);
    t_crow ``[Nk + 1]``, t_col ``[Es]`` (queries), t_perm ``[Es]``: the CSR of the transpose
    holds the values ``values[t_perm]``. head_allowed: bool ``[Es, H]`` for a per-head layout,
    else an empty tensor.
    """

    crow: torch.Tensor
    col: torch.Tensor
    edge_id: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor
    head_allowed: torch.Tensor


@dataclass
class TilingPlan:
    num_queries: int
    num_keys: int
    num_edges: int
    tile: int
    num_heads: int | None
    dense: list[DenseGroup] = field(default_factory=list)
    sparse: SparsePart | None = None

    @property
    def dense_edges(self) -> int:
        return sum(int(g.pos.numel()) for g in self.dense)

    @property
    def sparse_edges(self) -> int:
        return 0 if self.sparse is None else int(self.sparse.col.numel())

    @property
    def dense_tiles(self) -> int:
        return sum(int(g.kblocks.numel()) for g in self.dense)

    def to(self, device) -> "TilingPlan":
        def move(obj):
            return type(obj)(**{f.name: getattr(obj, f.name).to(device) for f in fields(obj)})

        return TilingPlan(self.num_queries, self.num_keys, self.num_edges, self.tile, self.num_heads,
                          [move(g) for g in self.dense], None if self.sparse is None else move(self.sparse))

    def __repr__(self) -> str:
        return (f"TilingPlan(queries={self.num_queries}, keys={self.num_keys}, edges={self.num_edges}, "
                f"tile={self.tile}, dense_tiles={self.dense_tiles}, dense_edges={self.dense_edges}, "
                f"groups={len(self.dense)}, sparse_edges={self.sparse_edges})")


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.numel() + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(x, 0, out=out[1:])
    return out


def build_plan(
    edge_index: torch.Tensor,
    num_queries: int,
    num_keys: int,
    *,
    head_mask: torch.Tensor | None = None,
    tile: int = 64,
    dense_threshold: float = 0.25,
) -> TilingPlan:
    """Build the plan of an edge list (row 0 keys, row 1 queries; any order, unique edges).

    ``dense_threshold``: the fraction of a tile's cells that must be edges for the tile to run
    densely (a dense tile costs ``tile**2`` score cells, a sparse edge about 4-8 cells' worth of
    sparse-kernel work, hence a default of 1/4).
    """
    tile = check_int("tile", tile, minimum=1)
    dense_threshold = check_float("dense_threshold", dense_threshold, minimum=0.0, maximum=1.0)
    device = edge_index.device
    key, query = edge_index[0], edge_index[1]
    E = key.numel()
    heads = None if head_mask is None else head_mask.shape[1]
    hm = 1 if heads is None else heads
    QB, KB = -(-num_queries // tile), -(-num_keys // tile)
    plan = TilingPlan(num_queries, num_keys, E, tile, heads)
    if E == 0:
        return plan

    qb, kb = query // tile, key // tile
    tile_id = qb * KB + kb
    uniq, inverse, counts = torch.unique(tile_id, return_inverse=True, return_counts=True)
    u_qb, u_kb = uniq // KB, uniq % KB
    rows_in = (num_queries - u_qb * tile).clamp_max(tile)
    cols_in = (num_keys - u_kb * tile).clamp_max(tile)
    is_dense = counts >= dense_threshold * rows_in * cols_in
    edge_dense = is_dense[inverse]

    # ---- dense tiles: per query block, its dense key tiles in increasing order (uniq is sorted
    # by (qb, kb)); group query blocks by their dense-tile count.
    d_qb, d_kb = u_qb[is_dense], u_kb[is_dense]
    if d_qb.numel():
        blocks, per_block = torch.unique_consecutive(d_qb, return_counts=True)
        first = _exclusive_cumsum(per_block)
        slot = torch.arange(d_qb.numel(), device=device) - torch.repeat_interleave(first[:-1], per_block)
        tile_slot = torch.full((uniq.numel(),), -1, dtype=torch.int64, device=device)
        tile_slot[is_dense.nonzero().flatten()] = slot
        # Each query block joins the group of its dense-tile count c; its rank there is g.
        count_of = torch.zeros(QB, dtype=torch.int64, device=device)
        count_of[blocks] = per_block
        order_blocks = torch.sort(per_block, stable=True).indices  # blocks by c, then id
        rank = torch.empty_like(order_blocks)
        cs, c_counts = torch.unique_consecutive(per_block[order_blocks], return_counts=True)
        c_first = _exclusive_cumsum(c_counts)
        rank[order_blocks] = torch.arange(blocks.numel(), device=device) - torch.repeat_interleave(
            c_first[:-1], c_counts)
        rank_of = torch.zeros(QB, dtype=torch.int64, device=device)
        rank_of[blocks] = rank
        # Per dense edge: group (by c), position in that group's [G, T, c*T] grid.
        eid = edge_dense.nonzero().flatten()
        e_q, e_k = query[eid], key[eid]
        e_block = e_q // tile
        c_e = count_of[e_block]
        pos = ((rank_of[e_block] * tile + (e_q - e_block * tile)) * (c_e * tile)
               + tile_slot[inverse[eid]] * tile + (e_k % tile))
        # One sort by (c, pos) lays every group's edges out contiguously and in grid order.
        big = int(pos.max()) + 1
        order = torch.sort(c_e * big + pos).indices
        eid, pos, c_e = eid[order], pos[order], c_e[order]
        e_ptr = _exclusive_cumsum(torch.bincount(torch.searchsorted(cs, c_e), minlength=cs.numel()))
        for gi, c in enumerate(cs.tolist()):
            members = blocks[order_blocks[c_first[gi]:c_first[gi + 1]]]  # increasing block ids
            G = members.numel()
            sel = order_blocks[c_first[gi]:c_first[gi + 1]]
            kblocks = d_kb[(first[sel][:, None] + torch.arange(c, device=device)).reshape(-1)].view(G, c)
            g_pos, g_eid = pos[e_ptr[gi]:e_ptr[gi + 1]], eid[e_ptr[gi]:e_ptr[gi + 1]]
            cells = tile * c * tile
            mask = torch.zeros(G, hm, tile, c * tile, dtype=torch.bool, device=device)
            if heads is None:
                mask.view(-1)[g_pos] = True
            else:
                flat = ((g_pos // cells)[:, None] * hm + torch.arange(hm, device=device)) * cells
                mask.view(-1)[(flat + (g_pos % cells)[:, None]).reshape(-1)] = head_mask[g_eid].reshape(-1)
            plan.dense.append(DenseGroup(members, kblocks, g_pos, g_eid, mask))

    # ---- sparse edges: CSR by (query, key) and the CSR of the transpose.
    s_eid = (~edge_dense).nonzero().flatten()
    if s_eid.numel():
        s_q, s_k = query[s_eid], key[s_eid]
        order = torch.sort(s_q * max(num_keys, 1) + s_k).indices
        s_eid, s_q, s_k = s_eid[order], s_q[order], s_k[order]
        crow = _exclusive_cumsum(torch.bincount(s_q, minlength=num_queries))
        t_perm = torch.sort(s_k * max(num_queries, 1) + s_q).indices
        t_crow = _exclusive_cumsum(torch.bincount(s_k, minlength=num_keys))
        allowed = (head_mask[s_eid] if heads is not None
                   else torch.empty(0, dtype=torch.bool, device=device))
        plan.sparse = SparsePart(crow, s_k, s_eid, t_crow, s_q[t_perm], t_perm, allowed)
    return plan


def get_plan(graph, num_queries: int, num_keys: int, **options) -> TilingPlan:
    """The plan of an AttentionGraph (cached on it per options and device) or of an edge_index."""
    from graphattn.graph import AttentionGraph

    if isinstance(graph, AttentionGraph):
        cache_key = ("plan", num_queries, num_keys, tuple(sorted(options.items())))
        plan = graph._cache.get(cache_key)
        if plan is None:
            plan = build_plan(graph.edge_index, num_queries, num_keys, head_mask=graph.head_mask, **options)
            graph._cache[cache_key] = plan
        return plan
    return build_plan(graph, num_queries, num_keys, **options)
