"""plan_traffic: the simulated plans of several world sizes from one chunked pass equal, rank by
rank, counts made on the dense mask with each rank's own thresholds."""

from __future__ import annotations

import functools

import pytest
import torch

from graphattn import distributed as gd
from graphattn import rules


def _dense_counts(g, world, move_queries):
    """Per rank: key/value rows, query rows and partials received, moved edges, from the mask."""
    n = g.num_nodes
    dense = g.to_dense()  # [query, key]
    owner = gd.owner_of(torch.arange(n), n, world)
    moved = torch.zeros(n, n, dtype=torch.bool)  # moved[i, j]: edge (j, i) computed at owner(j)
    for r in range(world):
        span = gd.local_range(n, r, world)
        d = gd.key_demand(g.query_slice(span.start, span.stop), n, world)
        if move_queries == "all":
            t = torch.where(torch.bincount(d["key_rank"], minlength=world) > 0, 1, gd.partition.NEVER)
            t[r] = gd.partition.NEVER
        elif move_queries:
            t = gd.move_thresholds(d["row_rank"], d["row_count"], d["key_rank"], d["key_min"], world, r)
        else:
            t = torch.full((world,), gd.partition.NEVER)
        for i in span:
            for s in range(world):
                cols = dense[i] & (owner == s)
                if s != r and int(cols.sum()) >= t[s]:
                    moved[i] |= cols
    kv, queries, partials, edges, kv_back = ([0] * world for _ in range(5))
    asked = torch.zeros(n, dtype=torch.int64)  # ranks asking for each key
    broadcast_rows = 0
    for r in range(world):
        span = gd.local_range(n, r, world)
        halo = (dense[span.start:span.stop] & ~moved[span.start:span.stop]).any(0) & (owner != r)
        kv[r] = int(halo.sum())
        asked += halo
        for i in span:
            to = [s for s in range(world) if (moved[i] & (owner == s)).any()]
            for s in to:
                queries[s] += 1
            # a row moved to every other rank is broadcast: one summed partial comes back
            everyone = world >= 3 and len(to) == world - 1
            broadcast_rows += everyone
            partials[r] += 1 if everyone else len(to)
        for s in range(world):
            edges[s] += int((moved[span.start:span.stop] & (owner == s)).sum())
    for j in range(n):  # a key every other rank asks for is broadcast: its gradient comes back once
        if asked[j]:
            kv_back[int(owner[j])] += 1 if world >= 3 and asked[j] == world - 1 else int(asked[j])
    return kv, queries, partials, edges, kv_back, broadcast_rows


@pytest.mark.parametrize("make", [
    lambda: rules.longformer(50, radius=2, global_indices=[0, 30]),
    lambda: rules.bigbird(48, block_size=4, seed=0),
    lambda: rules.bp_transformer(32, k=1),
    lambda: rules.star_transformer(20),
    lambda: rules.etc(30, num_global=3, radius=1),
    lambda: rules.random(30, num_random_keys=4, seed=2),
])
@pytest.mark.parametrize("move_queries", [True, False, "all"])
def test_matches_dense_counts(make, move_queries):
    g = make()
    rule = lambda queries: g.query_slice(queries.start, queries.stop)  # noqa: E731
    worlds = [1, 2, 3, 5]
    # chunks that cut the ranks' rows in pieces: the per-rank sums must not care
    got = gd.plan_traffic(rule, g.num_nodes, worlds, chunk=4, move_queries=move_queries)
    assert sorted(got) == worlds
    for w in worlds:
        kv, queries, partials, edges, kv_back, broadcast_rows = _dense_counts(g, w, move_queries)
        t = got[w]
        assert t["kv"].tolist() == kv
        assert t["queries"].tolist() == queries
        assert t["partials"].tolist() == partials
        assert t["edges"].tolist() == edges
        assert t["kv_back"].tolist() == kv_back and int(t["edges_back"].sum()) == sum(edges)
        assert t["maxima"].tolist() == [broadcast_rows] * w
        assert t["local"].tolist() == [len(gd.local_range(g.num_nodes, r, w)) for r in range(w)]


def test_global_rows_stop_needing_the_whole_sequence():
    n, w = 4096, 8
    rule = functools.partial(rules.longformer, n, radius=8, global_indices=[0])
    keys = gd.plan_traffic(rule, n, [w], move_queries=False)[w]
    plan = gd.plan_traffic(rule, n, [w])[w]
    assert int(keys["kv"][0]) == n - n // w  # the owner of the global row needs every key
    # its window; the global row goes to every rank (a broadcast) and comes back as one sum
    assert int(plan["kv"][0]) == 8 and int(plan["partials"][0]) == 1 and plan["maxima"].tolist() == [1] * w
    assert plan["queries"][1:].tolist() == [1] * (w - 1)


def test_plan_traffic_errors():
    rule = functools.partial(rules.band, 8, radius=1)
    with pytest.raises(ValueError, match="expected move_queries True, False or 'all', got 'some'"):
        gd.plan_traffic(rule, 8, [2], move_queries="some")
    with pytest.raises(ValueError, match="over num_nodes = 9 nodes"):
        gd.plan_traffic(rule, 9, [2])
    with pytest.raises(ValueError, match="expected chunk >= 1, got 0"):
        gd.plan_traffic(rule, 8, [2], chunk=0)
