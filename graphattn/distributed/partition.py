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

__all__ = ["local_range", "owner_of", "remote_keys", "halo_sizes", "key_demand", "unique_ids", "move_thresholds", "NEVER"]


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



NEVER = torch.iinfo(torch.int64).max  # a threshold no row reaches: its keys move instead


def key_demand(graph: AttentionGraph, num_nodes: int, world_size: int) -> dict:
    """What a shard's query rows ask of each rank, the input of :func:`move_thresholds`.

    ``graph`` holds one shard's query rows (a :meth:`~graphattn.AttentionGraph.query_slice` or
    a rule's ``queries=`` build; edges sorted by (query, key), as every AttentionGraph's are).
    Returns a dict of int64 tensors:

    - ``row_query``, ``row_rank``, ``row_count`` ``[P]``: each (query row, rank) pair with
      edges, as the query, the rank owning the keys and how many of its keys the row names;
    - ``keys``, ``key_rank``, ``key_min`` ``[K]``: each distinct key, its owner and the smallest
      ``row_count`` among the rows naming it (the key is needed by the halo as long as one of
      those rows stays);
    - ``edge_count`` ``[E]``: each edge's ``row_count``.

    >>> from graphattn import rules
    >>> g = rules.global_tokens(8, global_indices=[0], queries=range(0, 4))  # row 0 attends all 8
    >>> d = key_demand(g, 8, 2)
    >>> d["row_rank"].tolist(), d["row_count"].tolist()
    ([0, 1, 0, 0, 0], [4, 4, 2, 2, 2])
    """
    if not isinstance(graph, AttentionGraph):
        raise TypeError(f"expected graph to be an AttentionGraph, got {type(graph).__name__}")
    world_size = check_int("world_size", world_size, minimum=1)
    key, query = graph.edge_index.to("cpu")
    return demand_of_edges(key, query, unique_ids(key, num_nodes), num_nodes, world_size)


def unique_ids(ids: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)`` for node ids in ``[0, num_nodes)``, by a mark
    per node instead of a sort (O(E + n): the planning tool calls it on millions of edges).

    >>> [t.tolist() for t in unique_ids(torch.tensor([5, 1, 5, 3]), 8)]
    [[1, 3, 5], [2, 0, 2, 1]]
    """
    seen = torch.zeros(num_nodes, dtype=torch.bool)
    seen[ids] = True
    position = torch.cumsum(seen, 0) - 1
    return torch.nonzero(seen).flatten(), position[ids]


def demand_of_edges(key, query, unique_keys, num_nodes: int, world_size: int) -> dict:
    """:func:`key_demand` of sorted edges, given :func:`unique_ids` of the keys (which does not
    depend on the world size: computed once for several)."""
    owner = owner_of(key, num_nodes, world_size)
    # Within a query the keys ascend, so their owners do: a (query, owner) pair is a run.
    first = torch.ones(key.numel(), dtype=torch.bool)
    if key.numel() > 1:
        first[1:] = (query[1:] != query[:-1]) | (owner[1:] != owner[:-1])
    run = torch.cumsum(first, 0) - 1
    run_len = torch.bincount(run, minlength=int(first.sum()))
    edge_count = run_len[run]
    keys, inverse = unique_keys
    key_min = torch.full((keys.numel(),), NEVER, dtype=torch.int64).scatter_reduce(
        0, inverse, edge_count, "amin")
    return {"row_rank": owner[first], "row_count": run_len, "row_query": query[first], "keys": keys,
            "key_rank": owner_of(keys, num_nodes, world_size),
            "key_min": key_min, "edge_count": edge_count}


def move_thresholds(row_rank: torch.Tensor, row_count: torch.Tensor, key_rank: torch.Tensor,
                    key_min: torch.Tensor, world_size: int, rank: int, *, query_cost: int = 1) -> torch.Tensor:
    """Which query rows rank ``rank`` sends to each rank: ``[world_size]`` int64 thresholds; a
    row moves to rank ``s`` (its partial attention over the keys of ``s`` is computed there and
    comes back) when it names at least ``t[s]`` keys of ``s``; :data:`NEVER` where none moves.

    Rule: for each rank ``s`` the threshold minimises the rows that cross between the two
    ranks, ``query_cost * rows moved + keys moved`` (the rows sent to ``s``; the distinct keys of
    ``s`` that the remaining rows still name), and rows move only when that at most halves what
    moving every key costs (``t = NEVER``). A moved row costs ``D + Dv + 1`` values each way
    (query out, partial output and log-sum-exp back), a moved key ``D + Dv``: about the same,
    hence ``query_cost = 1``; the halving keeps the plain halo exchange wherever moving rows
    would save little for the extra exchanges. Global rows (a row that names every key of
    ``s``) and BP-Transformer's span nodes (rows naming two or more tokens each, none shared)
    move; band, window and random neighbourhoods (about one distinct key per row, shared by
    neighbouring rows) do not. The inputs are :func:`key_demand`'s.

    >>> d = key_demand(__import__("graphattn").rules.global_tokens(8, global_indices=[0],
    ...                queries=range(0, 4)), 8, 2)
    >>> move_thresholds(d["row_rank"], d["row_count"], d["key_rank"], d["key_min"], 2, 0).tolist()[1]
    4
    """
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0, maximum=world_size - 1)
    query_cost = check_int("query_cost", query_cost, minimum=0)
    thresholds = torch.full((world_size,), NEVER, dtype=torch.int64)
    if row_rank.numel() == 0:
        return thresholds
    big = int(max(int(row_count.max()), 1)) + 1
    # Candidates: each (rank, count) a row has; rows and keys sorted by (rank, count).
    rows = torch.sort(row_rank * big + row_count).values
    keys = torch.sort(key_rank * big + key_min.clamp(max=big - 1)).values
    seg_end = torch.searchsorted(rows, (torch.arange(world_size) + 1) * big)
    key_start = torch.searchsorted(keys, torch.arange(world_size) * big)
    cand_s = torch.div(rows, big, rounding_mode="floor")
    moved = seg_end[cand_s] - torch.searchsorted(rows, rows)  # rows of s naming >= c keys of s
    halo = torch.searchsorted(keys, rows) - key_start[cand_s]  # keys of s only rows below c name
    cost = query_cost * moved + halo
    c = rows - cand_s * big
    # Lowest cost per rank; among equals the highest threshold (fewest rows moved).
    score = cost * big + (big - 1 - c)
    best = torch.full((world_size,), NEVER, dtype=torch.int64).scatter_reduce(0, cand_s, score, "amin")
    keys_per_rank = torch.bincount(key_rank, minlength=world_size)
    found = best < NEVER
    best_cost = torch.where(found, torch.div(best, big, rounding_mode="floor"), torch.full_like(best, NEVER))
    best_c = torch.where(found, big - 1 - best % big, torch.full_like(best, NEVER))
    move = found & (2 * best_cost <= keys_per_rank)
    move[rank] = False  # local keys never move
    thresholds[move] = best_c[move]
    return thresholds
