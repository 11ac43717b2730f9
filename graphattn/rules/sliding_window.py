"""Longformer (Beltagy et al., 2020): sliding or dilated window plus global tokens."""

from __future__ import annotations

import numbers
from typing import Sequence

from graphattn._memory import edge_bytes
from graphattn._structure import WindowWithEdges
from graphattn._validate import check_index_list, check_int, check_query_range
from graphattn.compose import stack_heads
from graphattn.graph import AttentionGraph
from graphattn.rules.globals import global_tokens
from graphattn.rules.position import dilated
from graphattn.rules._build import check_edges

__all__ = ["longformer"]


def longformer(n: int, *, radius: int, dilation: int | Sequence[int] = 1, global_indices: Sequence[int] = (),
               queries: range | None = None) -> AttentionGraph:
    """Longformer attention: a (dilated) band of ``radius`` plus ITC global tokens.

    Edge set: ``i`` attends ``j`` iff ``|i - j| <= radius * d`` and ``d | (i - j)``, or ``i`` or
    ``j`` is in ``global_indices``. ``dilation`` is one int for all heads, or one int per head
    (Longformer dilates some heads only): the graph then carries a head layout
    (``head_mask[e, h]``). Keys per query: ``2*radius + 1 + g`` away from borders and globals
    (``g = len(global_indices)``), ``n`` for a global row. A per-layer schedule (plain bands
    below, dilated above) is a list of these graphs.

    >>> g = longformer(8, radius=1, global_indices=[0])
    >>> g.keys_per_query().tolist()
    [8, 3, 4, 4, 4, 4, 4, 3]
    >>> longformer(8, radius=1, dilation=[1, 2]).num_heads
    2
    """
    n = check_int("n", n, minimum=0)
    radius = check_int("radius", radius, minimum=0)
    per_head = isinstance(dilation, Sequence) and not isinstance(dilation, (str, bytes))
    if not per_head and (isinstance(dilation, bool) or not isinstance(dilation, numbers.Integral)):
        raise TypeError(f"expected dilation to be an int or a sequence of ints (one per head), "
                        f"got {type(dilation).__name__} {dilation!r}")
    dilations = list(dilation) if per_head else [dilation]
    if per_head and not dilations:
        raise ValueError("expected dilation to be an int or a non-empty sequence of ints, got []")
    dilations = [check_int(f"dilation[{h}]" if per_head else "dilation", d, minimum=1)
                 for h, d in enumerate(dilations)]
    glob = check_index_list("global_indices", global_indices, size=n)
    start, stop = check_query_range(queries, n)
    g_rows = int(((glob >= start) & (glob < stop)).sum())
    if not per_head:
        return _window_and_globals(dilated(n, radius=radius, dilation=dilations[0], queries=queries), glob, queries)
    head_edges = (stop - start) * (min(2 * radius + 1, n) + glob.numel()) + g_rows * n
    # each head's band and its union with the globals; the per-head layout then coalesces the heads
    check_edges(f"rules.longformer(n={n}, radius={radius}, dilation={dilation})", head_edges * len(dilations),
                2 * edge_bytes(1) + 40)
    globals_ = global_tokens(n, global_indices=glob, queries=queries)
    return stack_heads([dilated(n, radius=radius, dilation=d, queries=queries) | globals_ for d in dilations])


def _window_and_globals(window_graph: AttentionGraph, glob, queries) -> AttentionGraph:
    """``window_graph | global_tokens(...)`` kept structured: the window stays implicit and only
    the global rows' and columns' edges outside it are built (``O(n g)``, not ``O(n r)``)."""
    if not glob.numel():
        return window_graph
    n, window = window_graph.num_nodes, window_graph.structure
    globals_ = global_tokens(n, global_indices=glob, queries=queries)
    # window.contains: a few int64 temporaries per global edge
    check_edges(f"rules.longformer(n={n}): the global tokens' edges", globals_.num_edges, 40)
    key, query = globals_.edge_index
    extra = globals_._select(~window.contains(key, query))
    return AttentionGraph._implicit(n, window_graph.node_type, WindowWithEdges(window, extra))
