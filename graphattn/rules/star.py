"""Star-Transformer (Guo et al., 2019): ring edges among satellites, radical edges to the relay."""

from __future__ import annotations

import torch

from graphattn._validate import check_bool, check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import check_edges

__all__ = ["star_transformer"]


def star_transformer(n: int, *, cyclic: bool = True, queries: range | None = None) -> AttentionGraph:
    """Star-Transformer graph over ``2n + 1`` nodes: satellites ``0..n-1`` (the tokens),
    embedding nodes ``n..2n-1`` (``e_i = n + i`` holds token ``i``'s input embedding), relay ``2n``.

    Ring edges (label RING): satellite ``i`` attends satellites ``i-1, i, i+1`` (indices mod ``n``
    when ``cyclic``, the ring closes; otherwise the ends have one neighbour), its embedding node
    ``e_i`` and the relay: 5 keys, ``5n`` edges. Radical edges (label RADICAL): the relay attends
    itself and every satellite: ``n + 1`` edges. Total ``6n + 1`` for ``n >= 3`` (edges are a set,
    so a ring of 1 or 2 satellites has fewer). Embedding nodes are keys only: they attend nothing
    (the layer keeps their state as the fixed input). Select a phase with
    ``g.select_labels(EdgeLabel.RING)`` / ``EdgeLabel.RADICAL``.

    >>> g = star_transformer(4)
    >>> g.num_nodes, g.num_edges
    (9, 25)
    >>> g.keys_per_query().tolist()
    [5, 5, 5, 5, 0, 0, 0, 0, 5]
    """
    n = check_int("n", n, minimum=1)
    cyclic = check_bool("cyclic", cyclic)
    num_nodes = 2 * n + 1
    relay = 2 * n
    start, stop = check_query_range(queries, num_nodes)
    a, b = min(start, n), min(stop, n)
    lo = min(max(a, 1), b) if n >= 3 else a
    hi = max(min(b, n - 1), lo) if n >= 3 else a
    has_relay = start <= relay < stop
    num_edges = 5 * (b - a) + (n + 1) * has_relay
    check_edges(f"rules.star_transformer(n={n})", num_edges)
    # Rows away from the ring's ends attend i-1, i, i+1, n+i, 2n: already sorted, written in place.
    # The end rows (wrap-around, or a ring of 1 or 2) are sorted and de-duplicated on their own.
    head, tail = _end_rows(range(a, lo), n, cyclic), _end_rows(range(hi, b), n, cyclic)
    num_edges = head.shape[1] + 5 * (hi - lo) + tail.shape[1] + (n + 1) * has_relay
    edge_index = torch.empty(2, num_edges, dtype=torch.int64)
    e0, e1 = head.shape[1], head.shape[1] + 5 * (hi - lo)
    edge_index[:, :e0] = head
    sat = torch.arange(lo, hi)
    torch.add(sat[:, None], torch.tensor([-1, 0, 1, n]), out=edge_index[0, e0:e1].view(-1, 5)[:, :4])
    edge_index[0, e0:e1].view(-1, 5)[:, 4] = relay
    edge_index[1, e0:e1].view(-1, 5).copy_(sat[:, None].expand(-1, 5))
    edge_index[:, e1:e1 + tail.shape[1]] = tail
    label = torch.full((num_edges,), int(EdgeLabel.RING), dtype=torch.int8)
    if has_relay:  # the relay attends every satellite and itself
        edge_index[0, -(n + 1):-1] = torch.arange(n)
        edge_index[0, -1] = relay
        edge_index[1, -(n + 1):] = relay
        label[-(n + 1):] = int(EdgeLabel.RADICAL)
    node_type = torch.cat([
        torch.full((n,), int(NodeType.TOKEN), dtype=torch.int8),
        torch.full((n,), int(NodeType.EMBEDDING), dtype=torch.int8),
        torch.tensor([int(NodeType.RELAY)], dtype=torch.int8),
    ])
    return AttentionGraph._trusted(edge_index, num_nodes, node_type, label)


def _end_rows(rows: range, n: int, cyclic: bool) -> torch.Tensor:
    """Ring edges of the satellites ``rows``, for the rows whose neighbours wrap around or
    coincide: the five candidate keys per row, sorted, duplicates dropped."""
    sat = torch.arange(rows.start, rows.stop)
    left, right = sat - 1, sat + 1
    if cyclic:
        left, right = left % n, right % n
    else:  # an open ring: the missing neighbour is replaced by the satellite itself (deduplicated)
        left, right = torch.where(left < 0, sat, left), torch.where(right >= n, sat, right)
    keys = torch.sort(torch.stack([left, sat, right, sat + n, torch.full_like(sat, 2 * n)], dim=1), dim=1).values
    fresh = torch.ones_like(keys, dtype=torch.bool)
    fresh[:, 1:] = keys[:, 1:] != keys[:, :-1]
    return torch.stack([keys[fresh], sat[:, None].expand_as(keys)[fresh]])
