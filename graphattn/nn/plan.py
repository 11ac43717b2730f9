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

__all__ = ["DenseGroup", "SparsePart", "TilingPlan", "build_plan", "get_plan", "plan_bytes"]


@dataclass
class DenseGroup:
    """Query blocks that each attend ``c`` dense key tiles.

    qblocks: ``[G]`` query block ids. kblocks: ``[G, c]`` key block ids, increasing.
    pos: ``[Ed]`` flat positions of the group's edges in a ``[G, T, c*T]`` grid, increasing.
    edge_id: ``[Ed]`` the edge index (into the graph's edge list) of each position.
    mask: bool ``[G, Hm, T, c*T]`` (``Hm`` is 1, or the head count of a per-head layout); when
    every block's mask is the same (a band's, a block pattern's) one ``[1, Hm, T, c*T]`` mask
    expanded to ``G`` (stride 0: read it, do not ``view`` it).
    row_any: bool ``[G, Hm, T]``: the rows that have a key in the group (expanded likewise).
    q_start: the first query block when the blocks are consecutive (``qblocks = q_start + g``),
    else None. k_offset: with consecutive query blocks, the offset when every block's key tiles
    are the consecutive ``qblocks[g] + k_offset + s`` (a band's window), else None. Such a group's
    operands are strided views of ``q``, ``k``, ``v``: no gathers.
    """

    qblocks: torch.Tensor
    kblocks: torch.Tensor
    pos: torch.Tensor
    edge_id: torch.Tensor
    mask: torch.Tensor
    row_any: torch.Tensor | None = None
    q_start: int | None = None
    k_offset: int | None = None

    def __post_init__(self):
        if self.row_any is None:
            self.row_any = _row_any(self.mask)


def _row_any(mask: torch.Tensor) -> torch.Tensor:
    if mask.shape[0] > 1 and mask.stride(0) == 0:
        return mask[:1].any(-1).expand(mask.shape[0], -1, -1)
    return mask.any(-1)


def _group_layout(qblocks: torch.Tensor, kblocks: torch.Tensor, mask: torch.Tensor):
    """``(mask, q_start, k_offset)`` of a new group: the mask shared when every block's is the
    same, and the consecutive-block layout when it holds (see :class:`DenseGroup`)."""
    G, c = kblocks.shape
    q_start = k_offset = None
    if G and bool((qblocks == qblocks[0] + torch.arange(G, device=qblocks.device)).all()):
        q_start = int(qblocks[0])
        off = kblocks - qblocks[:, None]
        if bool((off == off[0, 0] + torch.arange(c, device=off.device)).all()):
            k_offset = int(off[0, 0])
    if G > 1 and bool((mask == mask[:1]).all()):
        mask = mask[:1].expand_as(mask)
    return mask, q_start, k_offset


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
        def move_tensor(t):
            if t.dim() and t.shape[0] > 1 and t.stride(0) == 0:  # a shared mask stays shared
                return t[:1].to(device).expand_as(t)
            return t.to(device)

        def move(obj):
            return type(obj)(**{f.name: move_tensor(v) if isinstance(v := getattr(obj, f.name), torch.Tensor) else v
                                for f in fields(obj)})

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


def _tile_counts(qb: torch.Tensor, kb: torch.Tensor, QB: int, KB: int):
    """The occupied tiles ``uniq`` (ids ``qb * KB + kb``, increasing), each edge's tile
    ``inverse`` into them and their edge ``counts``: ``torch.unique(qb * KB + kb,
    return_inverse=True, return_counts=True)``.

    Without the sort where a grid of counts is not much larger than the edge list (O(E + grid)
    by bincount; the sort is most of the cost of a plan otherwise): the whole QB x KB grid, or,
    for long sequences, each query block's span of key blocks (a band's few tiles per row)."""
    E = qb.numel()
    budget = min(max(4 * E, 1 << 20), 1 << 28)
    if QB * KB <= budget:
        cell, width, kmin = qb * KB + kb, KB, None
    else:
        kmin = torch.full((QB,), KB, dtype=torch.int64, device=qb.device).scatter_reduce_(0, qb, kb, "amin")
        local = kb - kmin[qb]
        width = int(local.max()) + 1
        if QB * width > budget:
            return torch.unique(qb * KB + kb, return_inverse=True, return_counts=True)
        cell = qb * width + local
    counts = torch.bincount(cell, minlength=QB * width)
    present = counts > 0
    uniq = present.nonzero().flatten()
    inverse = (torch.cumsum(present, 0) - 1)[cell]
    counts = counts[uniq]
    if kmin is not None:  # back to grid ids
        u_qb = uniq // width
        uniq = u_qb * KB + kmin[u_qb] + uniq % width
    return uniq, inverse, counts


def _sorted_by_query_key(query: torch.Tensor, key: torch.Tensor, num_keys: int) -> bool:
    if query.numel() < 2:
        return True
    code = query * max(num_keys, 1) + key
    return bool((code[1:] > code[:-1]).all())


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
    return _build_plan(edge_index, num_queries, num_keys, head_mask, tile, dense_threshold, sorted_edges=None)


def _build_plan(edge_index, num_queries: int, num_keys: int, head_mask, tile, dense_threshold, *,
                sorted_edges: bool | None) -> TilingPlan:
    """build_plan; ``sorted_edges``: whether the edges are sorted by (query, key) when the caller
    knows (an AttentionGraph's are), None to check."""
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

    # Tile coordinates; shifts and masks instead of int64 division when the tile is a power of two.
    if tile & (tile - 1) == 0:
        shift = tile.bit_length() - 1
        qb, kb, k_in = query >> shift, key >> shift, key & (tile - 1)
    else:
        qb, kb, k_in = query // tile, key // tile, key % tile
    uniq, inverse, counts = _tile_counts(qb, kb, QB, KB)
    edges_sorted = _sorted_by_query_key(query, key, num_keys) if sorted_edges is None else sorted_edges
    u_qb, u_kb = uniq // KB, uniq % KB
    rows_in = (num_queries - u_qb * tile).clamp_max(tile)
    cols_in = (num_keys - u_kb * tile).clamp_max(tile)
    is_dense = counts >= dense_threshold * rows_in * cols_in
    all_dense = bool(is_dense.all())
    edge_dense = None if all_dense else is_dense[inverse]

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
        # Position of each dense edge in its group's [G, T, c*T] grid, from two per-tile
        # tables: pos = base[tile] + query * width[tile] + key % T, with width = c*T and
        # base = (rank - qb) * T * width + slot * T (a handful of passes over the edges).
        width_u = count_of[u_qb] * tile
        base_u = (rank_of[u_qb] - u_qb) * tile * width_u + tile_slot * tile
        if all_dense:  # band, block, BigBird...: no gathers of the edge list
            eid, inv_d, q_d, kin_d = None, inverse, query, k_in
        else:
            eid = edge_dense.nonzero().flatten()
            inv_d, q_d, kin_d = inverse[eid], query[eid], k_in[eid]
        pos = base_u[inv_d] + q_d * width_u[inv_d] + kin_d
        Ed = pos.numel()
        # Lay every group's edges out contiguously and in grid order: blocks by (c, id), within
        # a block by (row, key). Edges sorted by (query, key) (every AttentionGraph) are in grid
        # order within each block already, so a scatter by per-block offsets does it in O(E);
        # otherwise one sort by (c, pos).
        if edges_sorted:
            per_block = torch.zeros(QB, dtype=torch.int64, device=device).index_add_(
                0, u_qb[is_dense], counts[is_dense])  # dense edges per query block
            out_blocks = blocks[order_blocks]
            out_start = torch.zeros(QB, dtype=torch.int64, device=device)
            out_start[out_blocks] = _exclusive_cumsum(per_block[out_blocks])[:-1]
            shift_u = (out_start - _exclusive_cumsum(per_block)[:-1])[u_qb]
            dest = torch.arange(Ed, device=device) + shift_u[inv_d]
            src = torch.arange(Ed, device=device) if eid is None else eid
            eid = torch.empty_like(src).index_put_((dest,), src)
            pos = torch.empty_like(pos).index_put_((dest,), pos)
            g_edges = torch.zeros(cs.numel(), dtype=torch.int64, device=device).index_add_(
                0, torch.repeat_interleave(torch.arange(cs.numel(), device=device), c_counts),
                per_block[out_blocks])
            e_ptr = _exclusive_cumsum(g_edges)
        else:
            eid = torch.arange(Ed, device=device) if eid is None else eid
            w_e = width_u[inv_d]
            order = torch.sort(w_e * (int(pos.max()) + 1) + pos).indices
            eid, pos, w_e = eid[order], pos[order], w_e[order]
            e_ptr = _exclusive_cumsum(torch.bincount(torch.searchsorted(cs * tile, w_e), minlength=cs.numel()))
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
            mask, q_start, k_offset = _group_layout(members, kblocks, mask)
            plan.dense.append(DenseGroup(members, kblocks, g_pos, g_eid, mask, q_start=q_start, k_offset=k_offset))

    # ---- sparse edges: CSR by (query, key) and the CSR of the transpose.
    s_eid = None if all_dense else (~edge_dense).nonzero().flatten()
    if s_eid is not None and s_eid.numel():
        s_q, s_k = query[s_eid], key[s_eid]
        if not edges_sorted:
            order = torch.sort(s_q * max(num_keys, 1) + s_k).indices
            s_eid, s_q, s_k = s_eid[order], s_q[order], s_k[order]
        crow = _exclusive_cumsum(torch.bincount(s_q, minlength=num_queries))
        # (key, query) order: a stable sort by key of the (query, key)-sorted edges.
        t_perm = torch.sort(s_k, stable=True).indices
        t_crow = _exclusive_cumsum(torch.bincount(s_k, minlength=num_keys))
        allowed = (head_mask[s_eid] if heads is not None
                   else torch.empty(0, dtype=torch.bool, device=device))
        plan.sparse = SparsePart(crow, s_k, s_eid, t_crow, s_q[t_perm], t_perm, allowed)
    return plan


def plan_bytes(num_edges: int, num_queries: int, num_keys: int, *, tile: int = 64,
               dense_threshold: float = 0.25, heads: int = 1) -> int:
    """An upper estimate of the bytes a plan of ``num_edges`` edges takes while it is built:
    per edge about six int64 words (tile codes and sort keys, positions and edge ids of the
    dense part, or the CSR's columns, ids, transpose and permutation), the dense tiles' bitmaps
    (a dense tile holds at least ``dense_threshold`` of its cells, so at most ``E /
    dense_threshold`` bitmap bytes per head), and the per-row and per-block pointers."""
    per_edge = 6 * 8 + heads / max(dense_threshold, 1.0 / (tile * tile))
    blocks = (-(-num_queries // tile)) * 16 + (-(-num_keys // tile)) * 16
    return int(num_edges * per_edge) + (num_queries + num_keys + 2) * 8 * 2 + blocks


def get_plan(graph, num_queries: int, num_keys: int, *, tile: int = 64, dense_threshold: float = 0.25) -> TilingPlan:
    """The plan of an AttentionGraph (cached on it per options and device) or of an edge_index."""
    from graphattn.graph import AttentionGraph

    if not isinstance(graph, AttentionGraph):
        return build_plan(graph, num_queries, num_keys, tile=tile, dense_threshold=dense_threshold)
    cache_key = ("plan", num_queries, num_keys, tile, dense_threshold)
    plan = graph._cache.get(cache_key)
    if plan is None:  # an AttentionGraph's edges are sorted by (query, key)
        plan = _build_plan(graph.edge_index, num_queries, num_keys, graph.head_mask, tile, dense_threshold,
                           sorted_edges=True)
        graph._cache[cache_key] = plan
    return plan
