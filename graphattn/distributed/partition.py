"""Sequence partitioning: which rank owns which node, and which remote rows a shard needs.

Ownership is an even, contiguous split of the ``num_nodes`` nodes of the graph over the
``world_size`` ranks: with ``base = n // world_size`` and ``extra = n % world_size``, ranks
``0 .. extra-1`` own ``base + 1`` nodes and the others ``base`` (the split of
``torch.tensor_split`` and of ``numpy.array_split``). ``n`` counts **every node**, tokens first:
for graphs with extra nodes (ETC / BigBird-ETC global nodes, the Star relay and embedding
nodes, BP-Transformer span nodes) the q/k/v shards run over all nodes in the graph's order, so
the extra nodes, which follow the tokens, belong to the last rank(s).

A query shard ``[start, stop)`` needs the key/value rows of every key its edges name; the ones
outside the shard form its *halo*. For a band of radius ``r`` the halo is ``2r`` rows whatever
``n`` is; for random keys it is almost every row. Everything here is pure (no communication):
the planning tool (``python -m graphattn.bench distributed``) uses it to simulate any number of
ranks on one machine.
"""

from __future__ import annotations

import torch

from graphattn._validate import check_int
from graphattn.graph import AttentionGraph

__all__ = ["local_range", "owner_of", "remote_keys", "halo_sizes"]


def local_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous node range rank ``rank`` of ``world_size`` owns among ``n`` nodes.

    Even split: the first ``n % world_size`` ranks own one node more than the others.

    >>> [local_range(10, r, 4) for r in range(4)]
    [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    >>> local_range(2, 3, 4)
    range(2, 2)
    """
    n = check_int("n", n, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0, maximum=world_size - 1)
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def owner_of(index, n: int, world_size: int) -> torch.Tensor:
    """The rank owning each node id of ``index`` (vectorised inverse of :func:`local_range`).

    >>> owner_of(torch.arange(10), 10, 4).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    """
    n = check_int("n", n, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(index, dtype=torch.int64)
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"expected index to hold integers, got dtype {index.dtype}")
    index = index.to(torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        bad = int(index.min()) if int(index.min()) < 0 else int(index.max())
        raise ValueError(f"expected node ids in [0, n={n}), got {bad}")
    base, extra = divmod(n, world_size)
    # The first `extra` ranks hold base + 1 rows each, i.e. ids below `cut`; past the cut every
    # rank holds `base` rows (base >= 1 there, since ids past the cut exist only when base >= 1).
    cut = extra * (base + 1)
    head = torch.div(index, base + 1, rounding_mode="floor")
    tail = extra + torch.div(index - cut, max(base, 1), rounding_mode="floor")
    return torch.where(index < cut, head, tail)


def remote_keys(graph: AttentionGraph, start: int, stop: int) -> torch.Tensor:
    """Sorted distinct key ids outside ``[start, stop)`` named by the edges of ``graph``.

    ``graph`` is usually the shard's own rows (``g.query_slice(start, stop)`` or
    ``rule(..., queries=range(start, stop))``); the result is the halo the shard must receive.

    >>> from graphattn import rules
    >>> remote_keys(rules.band(10, radius=2, queries=range(4, 7)), 4, 7).tolist()
    [2, 3, 7, 8]
    """
    if not isinstance(graph, AttentionGraph):
        raise TypeError(f"expected graph to be an AttentionGraph, got {type(graph).__name__}")
    needed = torch.unique(graph.edge_index[0])
    return needed[(needed < start) | (needed >= stop)]


def halo_sizes(rule, num_nodes: int, world_size: int, ranks=None, *, chunk: int | None = None) -> torch.Tensor:
    """Rows each rank would receive, ``[len(ranks)]`` int64, building only that rank's rows.

    ``rule(queries=range(a, b))`` must return the rows ``[a, b)`` of a graph over
    ``num_nodes`` nodes (every position-based rule of :mod:`graphattn.rules` does, e.g.
    ``functools.partial(rules.band, n, radius=r)``). ``ranks`` defaults to every rank.
    ``chunk``: build a rank's rows ``chunk`` queries at a time (bounds the memory of big shards;
    default: the whole shard at once). No communication: this simulates any world size on one
    machine.

    >>> from functools import partial
    >>> from graphattn import rules
    >>> halo_sizes(partial(rules.band, 64, radius=3), 64, 4).tolist()
    [3, 6, 6, 3]
    """
    num_nodes = check_int("num_nodes", num_nodes, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    ranks = range(world_size) if ranks is None else ranks
    needed = torch.zeros(num_nodes, dtype=torch.bool)
    out = []
    for r in ranks:
        span = local_range(num_nodes, r, world_size)
        step = max(len(span), 1) if chunk is None else check_int("chunk", chunk, minimum=1)
        needed.zero_()
        for a in range(span.start, span.stop, step):
            g = rule(queries=range(a, min(a + step, span.stop)))
            if not isinstance(g, AttentionGraph) or g.num_nodes != num_nodes:
                raise ValueError(f"expected rule(queries=...) to return an AttentionGraph over "
                                 f"num_nodes = {num_nodes} nodes, got {g!r}")
            needed[g.edge_index[0]] = True
        needed[span.start:span.stop] = False
        out.append(int(needed.sum()))
    return torch.tensor(out, dtype=torch.int64)
