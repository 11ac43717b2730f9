"""Vectorised edge builders shared by the rules (internal)."""

from __future__ import annotations

import torch

from graphattn._edge_sets import exclusive_cumsum
from graphattn._memory import check_memory, edge_bytes
from graphattn.graph import AttentionGraph, EdgeLabel

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


def window_rows(start: int, stop: int, offsets: torch.Tensor, n: int) -> torch.Tensor:
    """Edge index ``[2, E]`` of ``(i + o, i)`` for queries ``i`` in ``[start, stop)`` and sorted
    ``offsets`` ``o``, keeping keys in ``[0, n)``; sorted by query then key.

    Rows whose whole window lies inside ``[0, n)`` are written straight into the preallocated
    output without masking or concatenation; only the few rows near the borders pay for a
    validity mask. This keeps ``band(2**20, radius=16)`` within a small factor of a bare
    ``arange`` construction.
    """
    width = offsets.numel()
    if stop <= start or width == 0:
        return torch.empty(2, 0, dtype=torch.int64)
    lo_off, hi_off = int(offsets[0]), int(offsets[-1])
    in0 = min(max(start, -lo_off), stop)  # interior rows: i + lo_off >= 0 and i + hi_off < n
    in1 = max(min(stop, n - hi_off), in0)

    def masked(a: int, b: int) -> torch.Tensor:
        i = torch.arange(a, b)
        j = i[:, None] + offsets
        valid = (j >= 0) & (j < n)
        return torch.stack([j[valid], i[:, None].expand_as(j)[valid]])

    head, tail = masked(start, in0), masked(in1, stop)
    rows = in1 - in0
    out = torch.empty(2, head.shape[1] + rows * width + tail.shape[1], dtype=torch.int64)
    e0, e1 = head.shape[1], head.shape[1] + rows * width
    out[:, :e0] = head
    i = torch.arange(in0, in1)
    torch.add(i[:, None], offsets, out=out[0, e0:e1].view(rows, width))
    out[1, e0:e1].view(rows, width).copy_(i[:, None].expand(rows, width))
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
