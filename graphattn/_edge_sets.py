"""Set algebra on sorted edge lists, at the tensor level (internal).

An edge ``(key, query)`` of a graph over ``N`` nodes has the code ``query * N + key``; an
AttentionGraph keeps its codes strictly increasing. Membership is then a binary search
(``searchsorted``), de-duplication a stable sort, and a union a merge by computed output
positions. This module works on plain tensors and imports nothing from the graph type, so the
graph's own operators (``|``, ``&``, ``-``) can use it without an import cycle.
"""

from __future__ import annotations

import torch

__all__ = ["exclusive_cumsum", "edge_codes", "is_strictly_increasing", "locate", "first_occurrences",
           "merge_positions"]


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``[0, x0, x0 + x1, ...]`` (``len(x) + 1`` entries): the CSR pointer of counts ``x``."""
    # Not torch_geometric.utils.cumsum (the same two lines): importing PyG for it costs ~2 s and
    # ~180 MiB of resident memory in a process that plans a graph and uses nothing else of PyG.
    out = x.new_zeros(x.numel() + 1)
    torch.cumsum(x, 0, out=out[1:])
    return out


def edge_codes(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``query * N + key`` per edge: increasing exactly when sorted by (query, key) and unique."""
    codes = edge_index[1] * max(num_nodes, 1)
    return codes.add_(edge_index[0])


def is_strictly_increasing(codes: torch.Tensor) -> bool:
    return codes.numel() < 2 or bool((codes[1:] > codes[:-1]).all())


def locate(sorted_codes: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each code: (found in ``sorted_codes``, its position there, clamped when absent)."""
    if sorted_codes.numel() == 0:
        return torch.zeros_like(codes, dtype=torch.bool), torch.zeros_like(codes)
    pos = torch.searchsorted(sorted_codes, codes).clamp_max_(sorted_codes.numel() - 1)
    return sorted_codes[pos] == codes, pos


def first_occurrences(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coalesce unsorted codes: ``(order, first, group)`` where ``codes[order]`` is sorted (stable,
    so equal codes keep their input order), ``first`` marks the first of each run of equal codes
    in that order, and ``group`` numbers the runs; ``order[first]`` picks one edge per code, its
    earliest occurrence."""
    sorted_codes, order = torch.sort(codes, stable=True)
    first = torch.ones_like(sorted_codes, dtype=torch.bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    group = torch.cumsum(first, 0) - 1
    return order, first, group


def merge_positions(base: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output positions of a merge of two sorted, disjoint code lists: ``(base_pos, new_pos)``.

    Only the shorter side pays a binary search; the longer (``base``, usually a rule's whole edge
    list) gets its positions from a running count of the insertions before each of its entries,
    which is linear: ``base_pos[i] = i + #{new codes < base[i]}``.
    """
    ins = torch.searchsorted(base, new)  # number of base codes below each new code
    new_pos = ins + torch.arange(new.numel(), device=base.device)
    shift = torch.bincount(ins, minlength=base.numel() + 1)[: base.numel()]
    base_pos = torch.cumsum(shift, 0)
    base_pos += torch.arange(base.numel(), device=base.device)
    return base_pos, new_pos
