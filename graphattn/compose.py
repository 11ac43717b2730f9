"""Composition of attention graphs: set algebra, block lifting, batching, heads, schedules.

Set operations work on the sorted edge codes ``query * N + key`` that every AttentionGraph keeps
in increasing order, so membership is a binary search (``searchsorted``) and a union is a merge
by computed positions: no re-sort of the combined edge list.
"""

from __future__ import annotations

from typing import Sequence

import torch

from graphattn._validate import check_int, check_query_range, renamed_parameters
from graphattn._memory import check_memory, edge_bytes
from graphattn._edge_sets import edge_codes, exclusive_cumsum, locate
from graphattn._structure import Lifted
from graphattn.graph import AttentionGraph, _as_graphs, _heads, difference, intersection, union

__all__ = ["union", "intersection", "difference", "lift_blocks", "batch", "stack_heads", "schedule"]


@renamed_parameters(block="block_size")
def lift_blocks(
    block_graph: AttentionGraph,
    *,
    block_size: int,
    num_tokens: int,
    queries: range | None = None,
) -> AttentionGraph:
    """Lift a graph over blocks to tokens: every token of query block ``I`` attends every token
    of key block ``J`` for each block edge ``(J, I)``.

    Tokens ``[I*block_size, min((I+1)*block_size, num_tokens))`` form block ``I``; the last block
    may be partial. ``block_graph`` must have exactly ``ceil(num_tokens / block_size)`` token nodes and no
    relative positions. Labels and head masks travel with the block edges. ``queries`` restricts
    the output to a token range (sharding). The result keeps the block structure: its edge list is
    built (in time and memory linear in it) only when something reads the edges, and the
    attention engine plans it from the blocks (:mod:`graphattn._structure`).

    >>> from graphattn import rules
    >>> lift_blocks(rules.band(2, radius=0), block_size=2, num_tokens=3).to_dense().int().tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    if not isinstance(block_graph, AttentionGraph):
        raise TypeError(f"expected block_graph to be an AttentionGraph, got {type(block_graph).__name__}")
    block = check_int("block_size", block_size, minimum=1)
    num_tokens = check_int("num_tokens", num_tokens, minimum=0)
    num_blocks = -(-num_tokens // block)
    if block_graph.num_nodes != num_blocks or block_graph.num_tokens != num_blocks:
        raise ValueError(
            f"expected block_graph over ceil(num_tokens / block_size) = {num_blocks} token nodes, "
            f"got {block_graph.num_nodes} nodes"
        )
    if block_graph.relative is not None:
        raise ValueError("expected block_graph without relative positions (they do not lift to tokens)")
    start, stop = check_query_range(queries, num_tokens)
    check_memory(f"lift_blocks(num_tokens={num_tokens:,}): the node types", num_tokens, block_graph.device)
    node_type = torch.zeros(num_tokens, dtype=torch.int8, device=block_graph.device)
    return AttentionGraph._implicit(num_tokens, node_type, Lifted(block_graph, block, num_tokens, start, stop))


def _lift_edges(block_graph: AttentionGraph, block: int, num_tokens: int, start: int, stop: int) -> AttentionGraph:
    """The edge list of a lifted block graph (checked arguments; see :func:`lift_blocks`)."""
    num_blocks = block_graph.num_nodes
    device = block_graph.device
    bkey = block_graph.edge_index[0]
    bsize = (num_tokens - torch.arange(num_blocks, device=device) * block).clamp_max(block)
    # The key row of query block I (every token of I shares it), concatenated over blocks:
    # flat_key[row_ptr[I]:row_ptr[I+1]] are the key tokens, flat_edge the block edge of each.
    lens = bsize[bkey]
    flat_edge = torch.repeat_interleave(torch.arange(bkey.numel(), device=device), lens)
    flat_key = bkey[flat_edge] * block + (
        torch.arange(flat_edge.numel(), device=device) - exclusive_cumsum(lens)[:-1][flat_edge])
    row_ptr = exclusive_cumsum(lens)[block_graph.query_ptr]
    row_len = row_ptr.diff()

    # Token rows [start, stop) grouped into pieces of one query block each.
    b0, b1 = start // block, -(-stop // block)
    qb = torch.arange(b0, b1, device=device)
    tok_lo = torch.maximum(qb * block, torch.tensor(start, device=device))
    tok_hi = torch.minimum(qb * block + bsize[qb] if qb.numel() else qb, torch.tensor(stop, device=device))
    rows_in = (tok_hi - tok_lo).clamp_min(0)
    out_ptr = exclusive_cumsum(rows_in * row_len[qb])
    total = int(out_ptr[-1])
    heads = block_graph.num_heads
    check_memory(f"compose.lift_blocks(block_size={block}, num_tokens={num_tokens}): {total:,} edges",
                 edge_bytes(total) + total * (heads or 0))
    edge_index = torch.empty(2, total, dtype=torch.int64, device=device)
    label = torch.empty(total, dtype=torch.int8, device=device)
    head_mask = torch.empty(total, heads, dtype=torch.bool, device=device) if heads else None

    # Consecutive query blocks with the same (rows, key-row length) form a run; a run's output
    # is one [blocks, rows, keys] tensor written by a broadcast copy. Structured graphs (band,
    # BigBird) have a handful of runs; irregular block graphs fall back to one flat gather.
    shape = torch.stack([rows_in, row_len[qb]], dim=1)
    change = torch.ones(qb.numel(), dtype=torch.bool, device=device)
    change[1:] = (shape[1:] != shape[:-1]).any(dim=1)
    run_starts = change.nonzero().flatten().tolist() + [qb.numel()]
    if len(run_starts) - 1 <= 64:
        for r0, r1 in zip(run_starts[:-1], run_starts[1:]):
            rows, width = int(rows_in[r0]), int(row_len[qb[r0]])
            if rows * width == 0:
                continue
            e0, e1 = int(out_ptr[r0]), int(out_ptr[r1])
            src = row_ptr[qb[r0:r1]][:, None] + torch.arange(width, device=device)  # [G, width]
            view = (r1 - r0, rows, width)
            edge_index[0, e0:e1].view(view).copy_(flat_key[src][:, None, :].expand(view))
            edge_index[1, e0:e1].view(view).copy_(
                (tok_lo[r0:r1, None] + torch.arange(rows, device=device))[:, :, None].expand(view))
            label[e0:e1].view(view).copy_(block_graph.edge_label[flat_edge[src]][:, None, :].expand(view))
            if heads:
                head_mask[e0:e1].view(*view, heads).copy_(
                    block_graph.head_mask[flat_edge[src]][:, None].expand(*view, heads))
    else:
        tok = torch.arange(start, stop, device=device)
        counts = row_len[tok // block]
        rows = torch.repeat_interleave(tok, counts, output_size=total)
        within = torch.arange(total, device=device) - torch.repeat_interleave(
            exclusive_cumsum(counts)[:-1], counts, output_size=total)
        src = row_ptr[rows // block] + within
        edge_index[0] = flat_key[src]
        edge_index[1] = rows
        label = block_graph.edge_label[flat_edge[src]]
        if heads:
            head_mask = block_graph.head_mask[flat_edge[src]]
    node_type = torch.zeros(num_tokens, dtype=torch.int8, device=device)
    return AttentionGraph._trusted(edge_index, num_tokens, node_type, label, None, head_mask)


def batch(graphs: Sequence[AttentionGraph]) -> tuple[AttentionGraph, torch.Tensor]:
    """Disjoint union with PyG-style offsets: graph ``b`` occupies nodes ``ptr[b]:ptr[b+1]``.

    Returns ``(graph, ptr)``. No edge crosses graphs. Node types are concatenated, so the batched
    graph's tokens are no longer all in front; ``num_tokens`` counts them all. All graphs must
    agree on carrying relative positions, and head layouts must have one head count.
    """
    gs = _as_graphs(graphs)
    if not gs:
        raise ValueError("batch: expected at least one graph, got none")
    device = gs[0].device
    heads = {g.num_heads for g in gs} - {None}
    if len(heads) > 1:
        raise ValueError(f"batch: expected one head count, got {sorted(heads)}")
    heads = heads.pop() if heads else None
    if len({g.relative is None for g in gs}) > 1:
        raise ValueError("batch: expected relative positions on all graphs or on none")
    total = sum(g.num_edges for g in gs)
    check_memory(f"compose.batch({len(gs)} graphs): {total:,} edges",
                 edge_bytes(total) + total * (16 + 8 * (gs[0].relative is not None) + (heads or 0)))
    sizes = torch.tensor([g.num_nodes for g in gs], dtype=torch.int64)
    ptr = exclusive_cumsum(sizes)
    edge_index = torch.cat([g.edge_index.to(device) + int(o) for g, o in zip(gs, ptr[:-1])], dim=1)
    rel = None if gs[0].relative is None else torch.cat([g.relative.to(device) for g in gs])
    hm = None if heads is None else torch.cat([_heads(g, heads).to(device) for g in gs])
    out = AttentionGraph._trusted(
        edge_index, int(ptr[-1]), torch.cat([g.node_type.to(device) for g in gs]),
        torch.cat([g.edge_label.to(device) for g in gs]), rel, hm,
    )
    return out, ptr.to(device)


def stack_heads(graphs: Sequence[AttentionGraph]) -> AttentionGraph:
    """Per-head layout: head ``h`` attends over ``graphs[h]``. Returns the union of the edges with
    ``head_mask[e, h]`` true exactly when edge ``e`` is in ``graphs[h]``."""
    gs = _as_graphs(graphs)
    if not gs:
        raise ValueError("stack_heads: expected at least one graph, got none")
    for p, g in enumerate(gs):
        if g.head_mask is not None:
            raise ValueError(f"stack_heads: expected graphs without a head layout, graphs[{p}] has one")
    out = union(*gs)
    code = edge_codes(out.edge_index, out.num_nodes)
    mask = torch.stack([locate(edge_codes(g.edge_index, g.num_nodes), code)[0] for g in gs], dim=1)
    return AttentionGraph._trusted(out.edge_index, out.num_nodes, out.node_type, out.edge_label,
                                   out.relative, mask)


def schedule(graphs: Sequence[AttentionGraph]) -> tuple[AttentionGraph, ...]:
    """A per-layer schedule: layer ``l`` attends over ``graphs[l]``. Checks that every layer has
    the same nodes, and returns the schedule as a tuple (a plain list works wherever a schedule
    is accepted; this is the validated form)."""
    gs = _as_graphs(graphs)
    if not gs:
        raise ValueError("schedule: expected at least one graph, got none")
    for p, g in enumerate(gs[1:], start=1):
        if g.num_nodes != gs[0].num_nodes or not torch.equal(g.node_type, gs[0].node_type.to(g.device)):
            raise ValueError(f"schedule: expected every layer over the same nodes, graphs[{p}] differs from graphs[0]")
    return tuple(gs)
