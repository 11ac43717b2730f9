"""Shard plans: the plan's graph is the shard's slice of the whole graph, the multi-process
plans receive exactly what the pure simulation predicts (key/value rows, query rows, partial
results, moved edges, bytes), and the planning errors."""

from __future__ import annotations

import functools

import pytest
import torch
from tests.distributed.dist_cases import CASES, MOVES, PLANS

from graphattn import distributed as gd
from graphattn import rules


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("plan", [pytest.param(p, marks=pytest.mark.slow) if p == "keys" else p for p in PLANS])
@pytest.mark.parametrize("name", sorted(CASES))
def test_received_rows_match_the_simulation(dist_results, world, plan, name):
    g = CASES[name][0]()
    H, D, Dv, with_bias = CASES[name][3], CASES[name][4], CASES[name][5], CASES[name][6]
    got = [r[(name, plan)] for r in dist_results(world, plan)]
    rule = lambda queries: g.query_slice(queries.start, queries.stop)  # noqa: E731
    sim = gd.plan_traffic(rule, g.num_nodes, [world], move_queries=MOVES[plan], chunk=7)[world]
    assert [r["num_received"] for r in got] == sim["kv"].tolist()
    assert [r["queries"] for r in got] == sim["queries"].tolist()
    assert [r["partials"] for r in got] == sim["partials"].tolist()
    assert [r["edges"] for r in got] == sim["edges"].tolist()
    assert [r["moves"].tolist() for r in got] == (sim["thresholds"] < gd.partition.NEVER).tolist()
    # bytes per step (float64, with the edge bias where the case has one)
    unit = H * 8
    fwd = (sim["kv"] * (D + Dv) + sim["queries"] * D + sim["partials"] * (Dv + 1) + sim["maxima"]
           + (sim["edges"] if with_bias else 0)) * unit
    bwd = (sim["kv_back"] * (D + Dv) + sim["partials"] * D + sim["queries"] * (Dv + 1)
           + (sim["edges_back"] if with_bias else 0)) * unit
    assert [r["bytes"] for r in got] == list(zip(fwd.tolist(), bwd.tolist()))
    if plan == "keys":  # the halo alone is what halo_sizes counts
        assert sim["kv"].tolist() == gd.halo_sizes(rule, g.num_nodes, world).tolist()


def test_single_process_plan_graph_is_the_graph():
    g = rules.longformer(20, radius=2, dilation=[1, 2], global_indices=[3])
    plan = gd.shard_plan(g)
    assert plan.graph.equals(g) and plan.offset == 0 and plan.num_extended == 20
    assert "rank=0/1" in repr(plan)


def test_relabelled_local_graph_keeps_edge_order():
    # Build the plan a rank would have, by hand: rank 1 of 3 of an ETC graph (relative ids).
    g = rules.etc(17, num_global=2, radius=2)
    span = gd.local_range(g.num_nodes, 1, 3)
    part = g.query_slice(span.start, span.stop)
    remote = gd.remote_keys(part, span.start, span.stop)
    ext = torch.cat([torch.arange(span.start, span.stop), remote]).sort().values
    # relabelling is monotone: mapping the extended ids back gives the slice, edge for edge
    plan_graph_keys = torch.searchsorted(ext, part.edge_index[0])
    assert torch.equal(ext[plan_graph_keys], part.edge_index[0])
    assert bool((plan_graph_keys.diff()[part.edge_index[1].diff() == 0] > 0).all())


def test_shard_plan_errors():
    g = rules.band(6, radius=1)
    with pytest.raises(TypeError, match="expected num_nodes"):
        gd.shard_plan(functools.partial(rules.band, 6, radius=1))
    with pytest.raises(TypeError, match="expected graph to be an AttentionGraph or a rule callable"):
        gd.shard_plan(g.edge_index)
    with pytest.raises(ValueError, match="expected num_nodes = graph.num_nodes = 6, got 5"):
        gd.shard_plan(g, num_nodes=5)
    with pytest.raises(TypeError, match="to return an AttentionGraph"):
        gd.shard_plan(lambda queries: None, num_nodes=6)
    from graphattn.distributed.plan import _local_rows

    with pytest.raises(ValueError, match=r"to hold only the queries in \[0, 3\), got queries in \[0, 5\]"):
        _local_rows(lambda queries: g, 0, 3, 6)  # a rule ignoring queries=
    plan = gd.shard_plan(g)
    bad = gd.ShardPlan(**{**plan.__dict__, "rank": 1, "world_size": 2, "global_ranks": (0, 1)})
    with pytest.raises(ValueError, match="expected a plan for rank 0 of 1"):
        gd.graph_attention(torch.randn(6, 1, 2), torch.randn(6, 1, 2), torch.randn(6, 1, 2), bad)


def test_fingerprints_tell_graphs_apart():
    fp = gd.graph_fingerprint
    a, b = rules.bigbird(40, block_size=4, seed=1), rules.bigbird(40, block_size=4, seed=1)
    assert fp(a, 40) == fp(b, 40)
    assert fp(a, 40)[0] != fp(rules.bigbird(40, block_size=4, seed=2), 40)[0]
    etc = rules.etc(12, num_global=2, radius=1)
    assert fp(etc, 14)[0] != fp(etc.without_relative(), 14)[0]  # relative ids count
    rule = functools.partial(rules.bigbird, 40, block_size=4, seed=1)
    value, desc = fp(rule, 40)
    assert desc.startswith("graphattn.rules.block_sparse.bigbird(40, block_size=4, seed=1) over 40 nodes")
    assert value == fp(functools.partial(rules.bigbird, 40, block_size=4, seed=1), 40)[0]
    assert value != fp(rule, 41)[0] and value != fp(functools.partial(rules.bigbird, 40, seed=1), 40)[0]
    assert fp(a, 40)[1].startswith("an AttentionGraph over 40 nodes with ")


def test_move_queries_errors():
    with pytest.raises(ValueError, match="expected move_queries True, False or 'all', got 'yes'"):
        gd.shard_plan(rules.band(6, radius=1), move_queries="yes")
