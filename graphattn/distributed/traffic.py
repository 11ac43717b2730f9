"""What the sharded plans would move, for any number of ranks, without running them.

:func:`plan_traffic` makes the decisions :func:`~graphattn.distributed.shard_plan` makes
(:func:`~graphattn.distributed.move_thresholds` on :func:`~graphattn.distributed.key_demand`), for
every rank of several world sizes at once, from one pass over the graph's rows built a chunk at a
time (the rules' ``queries=`` hook): a 2^20-token sequence over 1,024 simulated ranks fits one
machine. The planning tool (``python -m graphattn.bench distributed``) reports it; the gloo tests
check it against the real plans.
"""

from __future__ import annotations

import torch

from graphattn._validate import check_int
from graphattn.distributed.partition import (NEVER, demand_of_edges, local_range, move_thresholds, owner_of,
                                             unique_ids)
from graphattn.graph import AttentionGraph

__all__ = ["plan_traffic", "traffic_of_plans"]


def _boundaries(num_nodes: int, worlds, chunk: int) -> list[int]:
    cuts = set(range(0, num_nodes, chunk)) | {num_nodes}
    for w in worlds:
        cuts |= {local_range(num_nodes, r, w).start for r in range(w)}
    return sorted(c for c in cuts if c <= num_nodes)


class _Counts:
    """What each rank receives under one plan (one ``move_queries`` choice) at one world size."""

    def __init__(self, world: int, num_nodes: int, move_queries):
        z = lambda: torch.zeros(world, dtype=torch.int64)  # noqa: E731
        self.world, self.move_queries = world, move_queries
        self.kv, self.queries, self.partials, self.edges = z(), z(), z(), z()
        self.kv_back, self.edges_back = z(), z()
        self.broadcast_rows = 0
        self.requests = torch.zeros(num_nodes, dtype=torch.int32)  # ranks asking for each key
        self.thresholds = torch.full((world, world), NEVER, dtype=torch.int64)

    def add_rank(self, r, W, row_query, row_rank, row_count, keys, key_rank, key_min):
        if self.move_queries is False or W == 1:
            t = torch.full((W,), NEVER, dtype=torch.int64)
        elif self.move_queries == "all":
            t = torch.where(torch.bincount(key_rank, minlength=W) > 0, 1, NEVER)
            t[r] = NEVER
        else:
            t = move_thresholds(row_rank, row_count, key_rank, key_min, W, r)
        self.thresholds[r] = t
        remote_key = (key_min < t[key_rank]) & (key_rank != r)  # keys still named by staying rows
        self.requests[keys[remote_key]] += 1
        kv = torch.bincount(key_rank[remote_key], minlength=W)
        moved = row_count >= t[row_rank]
        q = torch.bincount(row_rank[moved], minlength=W)
        e = torch.bincount(row_rank[moved], weights=row_count[moved].double(), minlength=W).long()
        # A row moved to every other rank is broadcast, and its parts come back as one sum.
        rows, copies = torch.unique(row_query[moved], return_counts=True)
        bcast = int((copies == W - 1).sum()) if W >= 3 else 0
        self.broadcast_rows += bcast
        self.kv[r] += int(kv.sum())
        self.kv_back += kv
        self.partials[r] += int(q.sum()) - bcast * (W - 1) + bcast
        self.queries += q
        self.edges += e
        self.edges_back[r] += int(e.sum())

    def result(self, n: int, local) -> dict:
        W = self.world
        kv_back = self.kv_back.clone()
        if W >= 3:  # a key every other rank asks for is broadcast: its gradients come back summed
            everyone = torch.nonzero(self.requests == W - 1).flatten()
            kv_back -= (W - 2) * torch.bincount(owner_of(everyone, n, W), minlength=W)
        return {"world": W, "local": local, "thresholds": self.thresholds, "kv": self.kv,
                "queries": self.queries, "partials": self.partials,
                "maxima": torch.full((W,), self.broadcast_rows, dtype=torch.int64), "edges": self.edges,
                "kv_back": kv_back, "edges_back": self.edges_back}


class _World:
    """Per world size: the demand of each rank, gathered over its consecutive chunks of rows,
    then decided (as shard_plan does) and counted under each plan."""

    def __init__(self, world: int, num_nodes: int, modes):
        self.world, self.n = world, num_nodes
        self.counts = [_Counts(world, num_nodes, m) for m in modes]
        self.key_min = torch.full((num_nodes,), NEVER, dtype=torch.int64)  # this rank's keys
        self.rank, self.rows = -1, []

    def add(self, rank: int, key, query, unique_keys):
        if rank != self.rank:
            self.finish()
            self.rank = rank
        d = demand_of_edges(key, query, unique_keys, self.n, self.world)
        self.rows.append((d["row_query"], d["row_rank"], d["row_count"]))
        keys = d["keys"]
        self.key_min[keys] = torch.minimum(self.key_min[keys], d["key_min"])

    def finish(self):
        r, W = self.rank, self.world
        if r < 0:
            return
        row_query, row_rank, row_count = (torch.cat(parts) for parts in zip(*self.rows))
        keys = torch.nonzero(self.key_min < NEVER).flatten()
        key_min = self.key_min[keys]
        key_rank = owner_of(keys, self.n, W)
        for c in self.counts:
            c.add_rank(r, W, row_query, row_rank, row_count, keys, key_rank, key_min)
        self.key_min[keys] = NEVER
        self.rank, self.rows = -1, []

    def results(self) -> list[dict]:
        self.finish()
        local = torch.tensor([len(local_range(self.n, r, self.world)) for r in range(self.world)], dtype=torch.int64)
        return [c.result(self.n, local) for c in self.counts]


def plan_traffic(rule, num_nodes: int, world_sizes, *, chunk: int = 1 << 14,
                 move_queries=True) -> dict[int, dict]:
    """Rows every rank receives per step under :func:`~graphattn.distributed.shard_plan`'s plan,
    for each world size in ``world_sizes``, building the graph ``chunk`` query rows at a time.

    ``rule(queries=range(a, b))`` must return the rows ``[a, b)`` of a graph over ``num_nodes``
    nodes (every position rule of :mod:`graphattn.rules` does, e.g.
    ``functools.partial(rules.bigbird, n, seed=0)``). ``move_queries`` as in
    :func:`~graphattn.distributed.shard_plan` (False: the plain halo exchange, every key moves
    to its queries).

    Returns ``{W: stats}``, each stat ``[W]`` int64 by rank: ``local`` rows; forward: ``kv``
    key/value rows received, ``queries`` query rows received (to attend local keys),
    ``partials`` partial results received (for local queries; a row moved to every other rank,
    which is broadcast, gets its parts as one sum), ``maxima`` log-sum-exp maxima received (one
    a head per broadcast row of the group), ``edges`` moved edges received (one bias value a
    head each, when a bias is given); backward: ``kv_back`` gradients of the key/value rows
    this rank served (a broadcast row's summed once), ``edges_back``; the backward's query and
    partial gradients are ``partials`` and ``queries`` rows again. Also ``thresholds``
    ``[W, W]``: row ``r`` is rank ``r``'s plan thresholds. Each collective counts as one copy
    of its result per rank it reaches, as :meth:`ShardPlan.received_bytes` counts.

    >>> from functools import partial
    >>> from graphattn import rules
    >>> t = plan_traffic(partial(rules.longformer, 64, radius=2, global_indices=[0]), 64, [4])[4]
    >>> t["kv"].tolist(), t["queries"].tolist(), t["partials"].tolist()
    ([2, 5, 5, 3], [0, 1, 1, 1], [1, 0, 0, 0])
    """
    return traffic_of_plans(rule, num_nodes, world_sizes, chunk=chunk, plans=[move_queries])[0]


def traffic_of_plans(rule, num_nodes: int, world_sizes, *, chunk: int = 1 << 14, plans=(False, True)) -> list[dict]:
    """:func:`plan_traffic` for several ``move_queries`` choices from the same pass over the
    graph: ``[{W: stats}]`` in the order of ``plans``."""
    num_nodes = check_int("num_nodes", num_nodes, minimum=0)
    chunk = check_int("chunk", chunk, minimum=1)
    for move_queries in plans:
        if not (isinstance(move_queries, bool) or move_queries == "all"):
            raise ValueError(f"expected move_queries True, False or 'all', got {move_queries!r}")
    worlds = sorted({check_int("world size", w, minimum=1) for w in world_sizes})
    states = [_World(w, num_nodes, plans) for w in worlds]
    cuts = _boundaries(num_nodes, worlds, chunk)
    for a, b in zip(cuts[:-1], cuts[1:]):
        g = rule(queries=range(a, b))
        if not isinstance(g, AttentionGraph) or g.num_nodes != num_nodes:
            raise ValueError(f"expected rule(queries=...) to return an AttentionGraph over "
                             f"num_nodes = {num_nodes} nodes, got {g!r}")
        key, query = g.edge_index.to("cpu")
        unique_keys = unique_ids(key, num_nodes)
        del g
        for st in states:
            st.add(int(owner_of(torch.tensor([a]), num_nodes, st.world)), key, query, unique_keys)
    per_world = {st.world: st.results() for st in states}
    return [{w: per_world[w][p] for w in worlds} for p in range(len(plans))]
