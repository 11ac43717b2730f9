"""Star-Transformer (Guo et al., 2019): ring edges among satellites, radical edges to the relay."""

from __future__ import annotations

import torch

from graphattn._validate import check_bool, check_int, check_query_range
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import coalesce

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
    sat = torch.arange(min(start, n), min(stop, n))
    left, right = sat - 1, sat + 1
    if cyclic:
        left, right = left % n, right % n
    else:  # an open ring: the missing neighbour is replaced by the satellite itself (deduplicated)
        left, right = torch.where(left < 0, sat, left), torch.where(right >= n, sat, right)
    ring = torch.stack([left, sat, right, sat + n, torch.full_like(sat, relay)], dim=1)
    ring_q = sat[:, None].expand_as(ring)
    has_relay = start <= relay < stop
    radical = torch.arange(n + 1) if has_relay else torch.empty(0, dtype=torch.int64)
    radical = torch.where(radical == n, relay, radical)
    key = torch.cat([ring.reshape(-1), radical])
    query = torch.cat([ring_q.reshape(-1), torch.full_like(radical, relay)])
    label = torch.cat([torch.full((ring.numel(),), int(EdgeLabel.RING), dtype=torch.int8),
                       torch.full((radical.numel(),), int(EdgeLabel.RADICAL), dtype=torch.int8)])
    node_type = torch.cat([
        torch.full((n,), int(NodeType.TOKEN), dtype=torch.int8),
        torch.full((n,), int(NodeType.EMBEDDING), dtype=torch.int8),
        torch.tensor([int(NodeType.RELAY)], dtype=torch.int8),
    ])
    return coalesce(key, query, num_nodes, node_type=node_type, label=label)
