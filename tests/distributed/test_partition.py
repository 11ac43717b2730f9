"""Partitioning: the even split, its vectorised inverse, and halo sizes against the dense mask."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import distributed as gd
from graphattn import rules


@given(n=st.integers(0, 300), world=st.integers(1, 40))
def test_local_range_is_an_even_contiguous_split(n, world):
    spans = [gd.local_range(n, r, world) for r in range(world)]
    assert [i for s in spans for i in s] == list(range(n))
    sizes = [len(s) for s in spans]
    assert sizes == [n // world + (1 if r < n % world else 0) for r in range(world)]
    # owner_of inverts it
    owners = gd.owner_of(torch.arange(n), n, world).tolist()
    assert owners == [r for r, s in enumerate(spans) for _ in s]


def test_matches_tensor_split():
    for n, world in [(10, 4), (3, 4), (1024, 7), (0, 3)]:
        ref = [len(c) for c in torch.arange(n).tensor_split(world)]
        assert [len(gd.local_range(n, r, world)) for r in range(world)] == ref


def test_partition_errors():
    with pytest.raises(ValueError, match="expected rank <= 3, got 4"):
        gd.local_range(10, 4, 4)
    with pytest.raises(ValueError, match="expected world_size >= 1, got 0"):
        gd.local_range(10, 0, 0)
    with pytest.raises(ValueError, match="expected n >= 0, got -1"):
        gd.local_range(-1, 0, 1)
    with pytest.raises(TypeError, match="expected rank to be an int"):
        gd.local_range(10, 1.0, 2)
    with pytest.raises(ValueError, match=r"expected node ids in \[0, n=10\), got 10"):
        gd.owner_of(torch.tensor([3, 10]), 10, 2)
    with pytest.raises(TypeError, match="expected index to hold integers"):
        gd.owner_of(torch.tensor([1.0]), 10, 2)
    with pytest.raises(TypeError, match="expected graph to be an AttentionGraph"):
        gd.remote_keys(torch.zeros(2, 0), 0, 1)
    with pytest.raises(ValueError, match="over num_nodes = 9 nodes"):
        gd.halo_sizes(functools.partial(rules.band, 8, radius=1), 9, 2)


@pytest.mark.parametrize("make", [
    lambda: rules.band(50, radius=3),
    lambda: rules.bigbird(50, block_size=4, seed=0),
    lambda: rules.bp_transformer(20, k=2),
    lambda: rules.random(40, num_random_keys=6, seed=1),
    lambda: rules.global_nodes(30, num_global=3),
])
@pytest.mark.parametrize("world", [1, 3, 8])
def test_halo_sizes_match_dense_mask(make, world):
    g = make()
    dense = g.to_dense()
    want = []
    for r in range(world):
        s = gd.local_range(g.num_nodes, r, world)
        need = dense[s.start:s.stop].any(0)
        need[s.start:s.stop] = False
        want.append(int(need.sum()))
    rule = lambda queries: g.query_slice(queries.start, queries.stop)  # noqa: E731
    assert gd.halo_sizes(rule, g.num_nodes, world).tolist() == want
    assert gd.halo_sizes(rule, g.num_nodes, world, ranks=[world - 1]).tolist() == want[-1:]


def test_band_halo_is_independent_of_n():
    for n in (2**10, 2**14):
        sizes = gd.halo_sizes(functools.partial(rules.band, n, radius=16), n, 8)
        assert sizes.tolist() == [16] + [32] * 6 + [16]


# ---------------------------------------------------------------- which rows move

def _brute_thresholds(g, start, stop, world, rank, query_cost=1):
    """Per rank s: try every threshold (and none) by counting rows and keys on the dense mask."""
    dense = g.to_dense()[start:stop]
    n = g.num_nodes
    out = []
    for s in range(world):
        span = gd.local_range(n, s, world)
        cols = dense[:, span.start:span.stop]
        counts = cols.sum(1)  # keys of s each row names
        keys_of_s = int(cols.any(0).sum())
        if s == rank or keys_of_s == 0:
            out.append(gd.partition.NEVER)
            continue
        best = (keys_of_s, -gd.partition.NEVER)  # moving nothing: every key moves
        best_t = gd.partition.NEVER
        for t in sorted({int(c) for c in counts.tolist() if c > 0}):
            moved = counts >= t
            cost = query_cost * int(moved.sum()) + int(cols[~moved].any(0).sum())
            if (cost, -t) < best:
                best, best_t = (cost, -t), t
        out.append(best_t if 2 * best[0] <= keys_of_s else gd.partition.NEVER)
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), world=st.integers(1, 5), density=st.floats(0.0, 1.0), seed=st.integers(0, 10**6),
       hubs=st.integers(0, 3))
def test_move_thresholds_minimise_the_moved_rows_and_keys(n, world, density, seed, hubs):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=gen) < density * 0.3
    mask[torch.randint(0, n, (hubs,), generator=gen)] = True  # global rows
    g = rules.band(n, radius=1) | __import__("graphattn").AttentionGraph.from_dense(mask)
    for rank in range(world):
        span = gd.local_range(n, rank, world)
        local = g.query_slice(span.start, span.stop)
        d = gd.key_demand(local, n, world)
        got = gd.move_thresholds(d["row_rank"], d["row_count"], d["key_rank"], d["key_min"], world, rank)
        assert got.tolist() == _brute_thresholds(g, span.start, span.stop, world, rank)
        # the per-edge count is its row's number of keys on the key's rank
        owner = gd.owner_of(local.edge_index[0], n, world)
        for e in range(0, local.num_edges, max(local.num_edges // 7, 1)):
            i, s = int(local.edge_index[1, e]), int(owner[e])
            assert int(d["edge_count"][e]) == int(((local.edge_index[1] == i) & (owner == s)).sum())


def test_global_rows_move_and_neighbourhoods_do_not():
    n, world = 4096, 8
    for rule, moves in [
        (functools.partial(rules.longformer, n, radius=16, global_indices=[0]), True),
        (functools.partial(rules.band, n, radius=16), False),
        (functools.partial(rules.random, n, num_random_keys=8, seed=0), False),
    ]:
        local = rule(queries=range(0, n // world))
        d = gd.key_demand(local, n, world)
        t = gd.move_thresholds(d["row_rank"], d["row_count"], d["key_rank"], d["key_min"], world, 0)
        assert bool((t < gd.partition.NEVER).any()) == moves
        if moves:  # only the global row moves: it names all 512 keys of every other rank
            assert t[1:].tolist() == [n // world] * (world - 1)


def test_demand_and_threshold_errors():
    with pytest.raises(TypeError, match="expected graph to be an AttentionGraph"):
        gd.key_demand(torch.zeros(2, 0), 4, 2)
    with pytest.raises(ValueError, match="expected rank <= 1, got 2"):
        gd.move_thresholds(*(torch.zeros(0, dtype=torch.int64),) * 4, 2, 2)
    with pytest.raises(ValueError, match="expected query_cost >= 0, got -1"):
        gd.move_thresholds(*(torch.zeros(0, dtype=torch.int64),) * 4, 2, 0, query_cost=-1)
