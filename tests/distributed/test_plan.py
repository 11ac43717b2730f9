"""Shard plans: the relabelled local graph is the shard's slice of the whole graph, and the
multi-process plans receive exactly the halo the pure simulation predicts."""

from __future__ import annotations

import functools

import pytest
import torch
from dist_cases import CASES

from graphattn import distributed as gd
from graphattn import rules


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name", sorted(CASES))
def test_received_rows_match_the_simulation(dist_results, world, name):
    g = CASES[name][0]()
    got = [r[name]["num_received"] for r in dist_results(world)]
    assert got == gd.halo_sizes(lambda queries: g.query_slice(queries.start, queries.stop),
                                g.num_nodes, world).tolist()


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
