"""Partitioning: the even split, its vectorised inverse, and halo sizes against the dense mask."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given
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
