"""Vectorised edge builders shared by the rules (internal)."""

from __future__ import annotations

import torch

from graphattn._edge_sets import exclusive_cumsum
from graphattn._memory import check_memory, edge_bytes
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType

__all__ = ["window_rows", "coalesce", "token_types", "ranges", "check_edges"]

#: Peak bytes per edge of a coalescing build (input, sort keys, permutation, output, labels).
COALESCE_BYTES = 120


def check_edges(what: str, num_edges: int, bytes_per_edge: int | None = None) -> None:
    """Refuse a rule call before it allocates: ``what`` (the call) builds ``num_edges`` edges
    (an upper bound) at ``bytes_per_edge`` peak bytes each (default: an edge list, its labels
    and one edge list of working space)."""
    per_edge = edge_bytes(1) if bytes_per_edge is None else bytes_per_edge
    check_memory(f"{what}: {int(num_edges):,} edges", int(num_edges) * per_edge)


def token_types(num_nodes: int, device=None) -> torch.Tensor:
    # A structured graph allocates nothing per edge, but its node types are one byte per node.
    check_memory(f"the node types of {num_nodes:,} nodes", num_nodes, device)
    return torch.zeros(num_nodes, dtype=torch.int8, device=device)


def global_node_types(n: int, num_global: int) -> torch.Tensor:
    """Node types of ``n`` tokens followed by ``num_global`` appended global nodes."""
    return torch.cat([token_types(n), torch.full((num_global,), int(NodeType.GLOBAL), dtype=torch.int8)])


def window_rows(start: int, stop: int, offsets: torch.Tensor, n: int, extra: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Edge index ``[2, E]`` of ``(i + o, i)`` for queries ``i`` in ``[start, stop)`` and sorted
    ``offsets`` ``o``, keeping keys in ``[0, n)``, then ``(x, i)`` for every key ``x`` of the
    sorted ``extra`` (keys every row has, all ``>= n``: appended global nodes); sorted by query
    then key.

    Rows whose whole window lies inside ``[0, n)`` are written straight into the preallocated
    output without masking or concatenation; only the few rows near the borders pay for a
    validity mask. This keeps ``band(2**20, radius=16)`` within a small factor of a bare
    ``arange`` construction.
    """
    extra = torch.empty(0, dtype=torch.int64) if extra is None else extra
    width, total = offsets.numel(), offsets.numel() + extra.numel()
    if stop <= start or total == 0:
        return torch.empty(2, 0, dtype=torch.int64)
    lo_off, hi_off = (int(offsets[0]), int(offsets[-1])) if width else (0, 0)
    in0 = min(max(start, -lo_off), stop)  # interior rows: i + lo_off >= 0 and i + hi_off < n
    in1 = max(min(stop, n - hi_off), in0)

    def masked(a: int, b: int) -> torch.Tensor:
        i = torch.arange(a, b)
        j = torch.cat([i[:, None] + offsets, extra.expand(b - a, -1)], dim=1)
        valid = torch.ones_like(j, dtype=torch.bool)
        valid[:, :width] = (j[:, :width] >= 0) & (j[:, :width] < n)
        return torch.stack([j[valid], i[:, None].expand_as(j)[valid]])

    head, tail = masked(start, in0), masked(in1, stop)
    rows = in1 - in0
    out = torch.empty(2, head.shape[1] + rows * total + tail.shape[1], dtype=torch.int64)
    e0, e1 = head.shape[1], head.shape[1] + rows * total
    out[:, :e0] = head
    i = torch.arange(in0, in1)
    keys = out[0, e0:e1].view(rows, total)
    torch.add(i[:, None], offsets, out=keys[:, :width])
    keys[:, width:] = extra
    out[1, e0:e1].view(rows, total).copy_(i[:, None].expand(rows, total))
    out[:, e1:] = tail
    return out


def coalesce(key: torch.Tensor, query: torch.Tensor, num_nodes: int, *, node_type=None,
             label: torch.Tensor | int = EdgeLabel.CUSTOM) -> AttentionGraph:
    """Sort and de-duplicate an edge list the rules produced (in-range by construction)."""
    if not isinstance(label, torch.Tensor):
        label = torch.full((key.numel(),), int(label), dtype=torch.int8)
    return AttentionGraph.from_edge_index(torch.stack([key, query]), num_nodes,
                                          node_type=node_type, edge_label=label)


def ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``arange(s, s + l)`` for each pair, vectorised: ``[sum(lengths)]``."""
    ptr = exclusive_cumsum(lengths)
    total = int(ptr[-1])
    offsets = ptr[:-1]
    return torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(total)
