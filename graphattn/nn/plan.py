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

from graphattn._edge_sets import exclusive_cumsum
from graphattn._memory import check_memory
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
    A plan made from a graph's structure (:func:`structural_plan`) has no ``pos`` and ``edge_id``
    (None): it serves calls without an edge bias; :func:`get_plan` builds the edge maps when a
    bias needs them.
    """

    qblocks: torch.Tensor
    kblocks: torch.Tensor
    pos: torch.Tensor | None
    edge_id: torch.Tensor | None
    mask: torch.Tensor
    row_any: torch.Tensor | None = None
    q_start: int | None = None
    k_offset: int | None = None

    def __post_init__(self):
        if self.row_any is None:
            self.row_any = _row_any(self.mask)


def _mask_cells(mask: torch.Tensor) -> int:
    if mask.shape[0] > 1 and mask.stride(0) == 0:
        return int(mask[:1].sum()) * mask.shape[0]
    return int(mask.sum())


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
        return sum(int(g.pos.numel()) if g.pos is not None else _mask_cells(g.mask) for g in self.dense)

    @property
    def has_edge_maps(self) -> bool:
        """Whether every dense group knows its edges' positions and ids (an edge bias needs them)."""
        return all(g.pos is not None for g in self.dense)

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
    check_memory(f"the tiling plan of {E:,} edges ({num_queries:,} queries, {num_keys:,} keys, tile {tile})",
                 plan_bytes(E, num_queries, num_keys, tile=tile, dense_threshold=dense_threshold, heads=heads or 1),
                 device)
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
    edges_sorted = _sorted_by_query_key(query, key, num_keys) if sorted_edges is None else sorted_edges
    uniq, inverse, counts = _tile_counts(qb, kb, QB, KB)
    u_qb, u_kb = uniq // KB, uniq % KB
    rows_in = (num_queries - u_qb * tile).clamp_max(tile)
    cols_in = (num_keys - u_kb * tile).clamp_max(tile)
    is_dense = counts >= dense_threshold * rows_in * cols_in
    all_dense = bool(is_dense.all())
    all_sparse = not all_dense and not bool(is_dense.any())  # random graphs: no gathers of the edge list
    edge_dense = None if all_dense or all_sparse else is_dense[inverse]

    # ---- dense tiles: per query block, its dense key tiles in increasing order (uniq is sorted
    # by (qb, kb)); group query blocks by their dense-tile count.
    d_qb, d_kb = u_qb[is_dense], u_kb[is_dense]
    if d_qb.numel():
        blocks, per_block = torch.unique_consecutive(d_qb, return_counts=True)
        first = exclusive_cumsum(per_block)
        slot = torch.arange(d_qb.numel(), device=device) - torch.repeat_interleave(first[:-1], per_block)
        tile_slot = torch.full((uniq.numel(),), -1, dtype=torch.int64, device=device)
        tile_slot[is_dense.nonzero().flatten()] = slot
        # Each query block joins the group of its dense-tile count c; its rank there is g.
        count_of = torch.zeros(QB, dtype=torch.int64, device=device)
        count_of[blocks] = per_block
        order_blocks = torch.sort(per_block, stable=True).indices  # blocks by c, then id
        rank = torch.empty_like(order_blocks)
        cs, c_counts = torch.unique_consecutive(per_block[order_blocks], return_counts=True)
        c_first = exclusive_cumsum(c_counts)
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
            out_start[out_blocks] = exclusive_cumsum(per_block[out_blocks])[:-1]
            shift_u = (out_start - exclusive_cumsum(per_block)[:-1])[u_qb]
            dest = torch.arange(Ed, device=device) + shift_u[inv_d]
            src = torch.arange(Ed, device=device) if eid is None else eid
            eid = torch.empty_like(src).index_put_((dest,), src)
            pos = torch.empty_like(pos).index_put_((dest,), pos)
            g_edges = torch.zeros(cs.numel(), dtype=torch.int64, device=device).index_add_(
                0, torch.repeat_interleave(torch.arange(cs.numel(), device=device), c_counts),
                per_block[out_blocks])
            e_ptr = exclusive_cumsum(g_edges)
        else:
            eid = torch.arange(Ed, device=device) if eid is None else eid
            w_e = width_u[inv_d]
            order = torch.sort(w_e * (int(pos.max()) + 1) + pos).indices
            eid, pos, w_e = eid[order], pos[order], w_e[order]
            e_ptr = exclusive_cumsum(torch.bincount(torch.searchsorted(cs * tile, w_e), minlength=cs.numel()))
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
    if all_sparse:
        s_eid = torch.arange(E, device=device)
    else:
        s_eid = None if all_dense else (~edge_dense).nonzero().flatten()
    if s_eid is not None and s_eid.numel():
        # The plan must not hold views of the caller's edge_index (a cache entry keyed weakly by
        # that tensor would keep it alive): a copy where no gather made one.
        s_q, s_k = (query, key.clone()) if all_sparse else (query[s_eid], key[s_eid])
        if not edges_sorted:
            order = torch.sort(s_q * max(num_keys, 1) + s_k).indices
            s_eid, s_q, s_k = s_eid[order], s_q[order], s_k[order]
        crow = exclusive_cumsum(torch.bincount(s_q, minlength=num_queries))
        # (key, query) order: a stable sort by key of the (query, key)-sorted edges.
        # int32 keys sort ~1.6x faster than int64 ones on CPU.
        t_perm = torch.sort(s_k.to(torch.int32) if num_keys < 2**31 else s_k, stable=True).indices
        t_crow = exclusive_cumsum(torch.bincount(s_k, minlength=num_keys))
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


def get_plan(graph, num_queries: int, num_keys: int, *, tile: int = 64, dense_threshold: float = 0.25,
             edge_maps: bool = False) -> TilingPlan:
    """The plan of an AttentionGraph (cached on it per options and device) or of an edge_index.

    A graph that still holds only its structure (a band, a lifted block graph) is planned from it
    (:func:`structural_plan`), without its edge list; ``edge_maps=True`` (a call with an edge
    bias) asks for a plan with every dense edge's position and id, which needs the edges."""
    from graphattn.graph import AttentionGraph

    if not isinstance(graph, AttentionGraph):
        return build_plan(graph, num_queries, num_keys, tile=tile, dense_threshold=dense_threshold)
    cache_key = ("plan", num_queries, num_keys, tile, dense_threshold)
    plan = graph._cache.get(cache_key)
    if plan is not None and (plan.has_edge_maps or not edge_maps):
        return plan
    structure = graph.structure
    if plan is None and not edge_maps and structure is not None and num_queries == num_keys == graph.num_nodes:
        plan = structural_plan(structure, tile=tile, dense_threshold=dense_threshold)
        if plan is not None:
            graph._cache[cache_key] = plan
            return plan
    # An AttentionGraph's edges are sorted by (query, key).
    plan = _build_plan(graph.edge_index, num_queries, num_keys, graph.head_mask, tile, dense_threshold,
                       sorted_edges=True)
    graph._cache[cache_key] = plan
    return plan


# ---------------------------------------------------------------------------------------------
# Plans from a graph's structure (graphattn._structure): no edge list, no per-edge arrays.


def structural_plan(structure, *, tile: int = 64, dense_threshold: float = 0.25) -> TilingPlan | None:
    """The tiling plan of a structured graph (a band, a lifted block graph) computed from its
    structure, or None when it has none here (dilated offsets, blocks that are not a multiple of
    the tile, per-head layouts, or a tile the edge-list plan would leave sparse: those take the
    edge list).

    The same tiles and masks as :func:`build_plan` on the graph's edges (its query blocks may be
    grouped differently: blocks whose masks are the same form one group with one shared mask), no
    CSR part but a window's extra edges outside its tiles, and no ``pos`` / ``edge_id``. O(query blocks x tiles) work; only the border blocks'
    masks are materialised."""
    from graphattn._structure import Lifted, Window, WindowWithEdges

    tile = check_int("tile", tile, minimum=1)
    dense_threshold = check_float("dense_threshold", dense_threshold, minimum=0.0, maximum=1.0)
    if isinstance(structure, Window):
        return _window_plan(structure, tile, dense_threshold)
    if isinstance(structure, WindowWithEdges):
        return _window_with_edges_plan(structure, tile, dense_threshold)
    if isinstance(structure, Lifted):
        return _lifted_plan(structure, tile, dense_threshold)
    return None


def _consecutive_layout(qblocks: torch.Tensor, kblocks: torch.Tensor):
    """``(q_start, k_offset)`` of :class:`DenseGroup` (None where the layout does not hold)."""
    G, c = kblocks.shape
    if not G or not bool((qblocks == qblocks[0] + torch.arange(G, device=qblocks.device)).all()):
        return None, None
    off = kblocks - qblocks[:, None]
    if bool((off == off[0, 0] + torch.arange(c, device=off.device)).all()):
        return int(qblocks[0]), int(off[0, 0])
    return int(qblocks[0]), None


def _plan_from_groups(n: int, T: int, groups: list, device) -> TilingPlan:
    """``groups``: ``(qblocks [G], kblocks [G, c], mask [G or 1, 1, T, cT])``; a one-block mask
    for several blocks is shared (expanded)."""
    plan = TilingPlan(n, n, 0, T, None)
    for qblocks, kblocks, mask in sorted(groups, key=lambda g: int(g[0][0])):
        G = qblocks.numel()
        mask = mask.to(device)
        if mask.shape[0] != G:
            mask = mask.expand(G, -1, -1, -1)
        q_start, k_offset = _consecutive_layout(qblocks, kblocks)
        plan.dense.append(DenseGroup(qblocks.to(device), kblocks.to(device), None, None, mask,
                                     q_start=q_start, k_offset=k_offset))
        plan.num_edges += _mask_cells(mask)
    return plan


def _dense_enough(mask: torch.Tensor, kblocks: torch.Tensor, qblocks: torch.Tensor, n: int, T: int, thr: float) -> bool:
    """Whether every tile of these blocks is one the edge-list plan keeps dense (non-empty and at
    least ``thr`` of its in-range cells)."""
    G, c = kblocks.shape
    cells = mask.reshape(mask.shape[0], T, c, T).sum(dim=(1, 3))  # [G, c]
    rows_in = torch.clamp(n - qblocks * T, max=T)[:, None]
    cols_in = torch.clamp(n - kblocks * T, max=T)
    return not bool((cells == 0).any()) and not bool((cells < thr * rows_in * cols_in).any())


def _window_plan(w, T: int, thr: float) -> TilingPlan | None:
    lay = _WindowLayout.of(w, T)
    groups = None if lay is None else lay.groups(thr)
    return None if groups is None else _plan_from_groups(w.n, T, groups, w.device)


class _WindowLayout:
    """A window's dense tiles: per query block ``I`` the key tiles ``kf[I] .. kl[I]`` (where
    ``present[I]``); :meth:`groups` makes the groups of :func:`_plan_from_groups`."""

    @classmethod
    def of(cls, w, T: int) -> "_WindowLayout | None":
        """The layout of window ``w``, or None when it has none here (no offsets, or dilated)."""
        return cls(w, T) if w.offsets.numel() and w.contiguous else None

    def __init__(self, w, T: int):
        n, lo, hi = w.n, w.start, w.stop
        self.w, self.T = w, T
        self.omin, self.omax = int(w.offsets[0]), int(w.offsets[-1])
        I = torch.arange(-(-n // T))
        self.r_lo = torch.clamp(I * T, min=lo)
        self.r_hi = torch.clamp(torch.clamp((I + 1) * T, max=n), max=hi)
        # Row i has keys max(0, i + omin) .. min(n - 1, i + omax); a block's tiles span its rows'.
        k_first = torch.clamp(self.r_lo + self.omin, min=0)
        k_last = torch.clamp(self.r_hi - 1 + self.omax, max=n - 1)
        self.present = (self.r_hi > self.r_lo) & (k_last >= k_first)
        self.kf, self.kl = k_first // T, k_last // T
        # Interior blocks (full rows in range, every key inside [0, n), every key tile full) have
        # one geometry: one shared mask. The border blocks are planned one by one.
        self.interior = (self.present & (self.r_lo == I * T) & (self.r_hi == (I + 1) * T) & (I * T + self.omin >= 0)
                         & ((I + 1) * T - 1 + self.omax <= n - 1) & ((self.kl + 1) * T <= n))

    def block_mask(self, b: int) -> torch.Tensor:
        """bool ``[1, 1, T, c*T]``: the window's cells in the tiles of query block ``b``."""
        w, T = self.w, self.T
        c = int(self.kl[b] - self.kf[b]) + 1
        i = b * T + torch.arange(T)[:, None]
        j = int(self.kf[b]) * T + torch.arange(c * T)[None, :]
        d = j - i
        inside = (j < w.n) & (i >= w.start) & (i < w.stop)
        return ((d >= self.omin) & (d <= self.omax) & inside)[None, None]

    def groups(self, thr: float, alone: torch.Tensor | None = None) -> list | None:
        """``(members, kblocks, mask)`` per group: the interior blocks with one shared mask, each
        border block alone; None when a tile is below the dense threshold. ``alone``: bool
        ``[QB]``, blocks to plan one by one even when interior (their masks will change)."""
        T = self.T
        interior = self.interior if alone is None else self.interior & ~alone
        border = (self.present & ~interior).nonzero().flatten()
        check_memory(f"the tiling plan of a band (n={self.w.n:,}, tile {T})",
                     2 * sum(T * T * (int(self.kl[b] - self.kf[b]) + 1) for b in border.tolist())
                     + 64 * self.kf.numel())
        out = []
        for members in [interior.nonzero().flatten()] + [border[b:b + 1] for b in range(border.numel())]:
            if not members.numel():
                continue
            first = int(members[0])
            c = int(self.kl[first] - self.kf[first]) + 1
            mask, kblocks = self.block_mask(first), self.kf[members][:, None] + torch.arange(c)
            if not _dense_enough(mask, kblocks[:1], members[:1], self.w.n, T, thr):
                return None
            out.append((members, kblocks, mask))
        return out


def _window_with_edges_plan(s, T: int, thr: float) -> TilingPlan | None:
    """A window plus extra edges (Longformer's globals): the window's plan, the extra edges that
    fall in its tiles set in those blocks' masks, the others a CSR part whose edge ids are their
    places in the graph's (query, key)-sorted edge list, computed from the structure."""
    w, n = s.window, s.window.n
    lay = _WindowLayout.of(w, T)
    if lay is None:
        return None
    key, query = (t.cpu() for t in s.extra.edge_index)
    QB = -(-n // T)
    qb, kb = query // T, key // T
    in_tiles = lay.present[qb] & (kb >= lay.kf[qb]) & (kb <= lay.kl[qb])
    # The extra edges outside the window's tiles must leave their tiles sparse, as the
    # edge-list plan would (only extra edges lie there).
    out_q, out_k = query[~in_tiles], key[~in_tiles]
    if out_q.numel():
        codes, counts = torch.unique((out_q // T) * QB + out_k // T, return_counts=True)
        rows_in = torch.clamp(n - (codes // QB) * T, max=T)
        cols_in = torch.clamp(n - (codes % QB) * T, max=T)
        if bool((counts >= thr * rows_in * cols_in).any()):
            return None
    in_q, in_k = query[in_tiles], key[in_tiles]  # sorted by query, so by query block
    in_qb = in_q // T
    touched = torch.zeros(QB, dtype=torch.bool)
    touched[in_qb] = True
    groups = lay.groups(thr, alone=touched)
    if groups is None:
        return None
    for g, (members, kblocks, mask) in enumerate(groups):
        b = int(members[0])
        if members.numel() == 1 and bool(touched[b]):
            lo, hi = (int(torch.searchsorted(in_qb, b, right=right)) for right in (False, True))
            mask = mask.clone()
            mask[0, 0, in_q[lo:hi] - b * T, in_k[lo:hi] - int(lay.kf[b]) * T] = True
            groups[g] = (members, kblocks, mask)
    plan = _plan_from_groups(n, T, groups, w.device)
    if out_q.numel():
        # Edge ids: the row's start in the whole graph, plus the window's and the extra keys
        # before this one in its row.
        extra_counts = torch.bincount(query, minlength=n)
        row_start = exclusive_cumsum(w.counts().cpu() + extra_counts)
        rank = torch.arange(query.numel()) - exclusive_cumsum(extra_counts)[query]
        eid = row_start[query] + w.keys_before(key, query) + rank
        crow = exclusive_cumsum(torch.bincount(out_q, minlength=n))
        t_perm = torch.sort(out_k, stable=True).indices
        t_crow = exclusive_cumsum(torch.bincount(out_k, minlength=n))
        dev = w.device
        plan.sparse = SparsePart(crow.to(dev), out_k.to(dev), eid[~in_tiles].to(dev), t_crow.to(dev),
                                 out_q[t_perm].to(dev), t_perm.to(dev), torch.empty(0, dtype=torch.bool, device=dev))
        plan.num_edges += out_q.numel()
    return plan


def _lifted_plan(lf, T: int, thr: float) -> TilingPlan | None:
    B = lf.block_size
    if B % T or lf.num_heads is not None:
        return None
    m, n, lo, hi = B // T, lf.n, lf.start, lf.stop
    key, query = (t.cpu() for t in lf.block_graph.edge_index)
    nb = lf.block_graph.num_nodes
    QB = -(-n // T)
    # The key tiles of block row b: the tiles of its key blocks (inside n), in increasing order.
    tiles_of = torch.clamp(-(-(n - torch.arange(nb) * B) // T), max=m)
    per_edge = tiles_of[key]
    ptr = exclusive_cumsum(torch.zeros(nb, dtype=torch.int64).index_add_(0, query, per_edge))
    flat = torch.repeat_interleave(key * m, per_edge) + (
        torch.arange(int(per_edge.sum())) - torch.repeat_interleave(exclusive_cumsum(per_edge)[:-1], per_edge))
    I = torch.arange(QB)
    b = I // m
    r_lo = torch.clamp(I * T, min=lo)
    r_hi = torch.clamp(torch.clamp((I + 1) * T, max=n), max=hi)
    c_of = ptr[b + 1] - ptr[b]
    present = (r_hi > r_lo) & (c_of > 0)
    # A tile row cut by the query range below the threshold is sparse in the edge-list plan.
    if bool((present & ((r_hi - r_lo) < thr * torch.clamp(n - I * T, max=T))).any()):
        return None
    # Rows whose cells are all edges (full rows in range, no partial last key tile) share one
    # all-true mask per tile count; the others (a partial block, a range edge) are planned alone.
    touches_last = torch.zeros(nb, dtype=torch.bool)
    if n % T:
        touches_last[query[key * m + tiles_of[key] - 1 == QB - 1]] = True
    full = present & (r_lo == I * T) & (r_hi == (I + 1) * T) & ~touches_last[b]
    alone = (present & ~full).nonzero().flatten()
    check_memory(f"the tiling plan of a lifted block graph (n={n:,}, tile {T})",
                 2 * sum(T * T * int(c_of[i]) for i in alone.tolist()) + 8 * int(c_of[full].sum()) + 64 * QB)
    groups = []
    rows_full = full.nonzero().flatten()
    for c in torch.unique(c_of[rows_full]).tolist():
        members = rows_full[c_of[rows_full] == c]
        kblocks = flat[ptr[b[members]][:, None] + torch.arange(c)]
        groups.append((members, kblocks, torch.ones(1, 1, T, c * T, dtype=torch.bool)))
    for i in alone.tolist():
        c = int(c_of[i])
        kblocks = flat[ptr[b[i]] + torch.arange(c)][None]
        rows = i * T + torch.arange(T)
        cols = (kblocks[0, :, None] * T + torch.arange(T)).reshape(-1)
        mask = ((rows >= r_lo[i]) & (rows < r_hi[i]))[:, None] & (cols < n)[None, :]
        groups.append((torch.tensor([i]), kblocks, mask[None, None]))
    return _plan_from_groups(n, T, groups, lf.device)
