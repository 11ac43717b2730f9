"""Tests for graphattn.rules.kmeans (Routing Transformer attention)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn._random import seed_key
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules.clustering import kmeans, spherical_kmeans


# ----------------------------------------------------------------------------- oracles
def unit_rows(v: torch.Tensor) -> list[list[float]]:
    out = []
    for row in v.double().tolist():
        norm = math.sqrt(sum(t * t for t in row))
        out.append([t / norm for t in row] if norm > 1e-12 else [0.0] * len(row))
    return out


def dot(a, b) -> float:
    return sum(s * t for s, t in zip(a, b))


def oracle_kmeans(points: list[list[float]], num_clusters: int, iters: int, seed):
    """Spherical k-means with Python loops over points, fed by the same generator draws."""
    gen = torch.Generator().manual_seed(seed_key(seed))
    m = len(points)
    chosen = [int(torch.randint(0, m, (1,), generator=gen))]
    while len(chosen) < num_clusters:
        weight = [max(0.0, 1.0 - max(dot(p, points[c]) for c in chosen)) for p in points]
        if sum(weight) <= 0.0:
            weight = [1.0] * m
        chosen.append(int(torch.multinomial(torch.tensor(weight, dtype=torch.float64), 1, generator=gen)))
    cents = [list(points[c]) for c in chosen]

    def assign():
        return [max(range(num_clusters), key=lambda c: (dot(p, cents[c]), -c)) for p in points]

    labels = assign()
    for _ in range(iters):
        for c in range(num_clusters):
            members = [p for p, a in zip(points, labels) if a == c]
            if not members:
                continue
            s = [sum(col) for col in zip(*members)]
            norm = math.sqrt(dot(s, s))
            if norm > 1e-12:
                cents[c] = [t / norm for t in s]
        labels = assign()
    return cents, labels


def oracle_routing(queries, keys, cents, window: int) -> set:
    n = len(queries)
    edges = set()
    routed = set()
    for c in cents:
        q_set = sorted(range(n), key=lambda i: (-dot(queries[i], c), i))[:window]
        k_set = sorted(range(n), key=lambda j: (-dot(keys[j], c), j))[:window]
        routed |= set(q_set)
        edges |= {(j, i) for i in q_set for j in k_set}
    return edges | {(i, i) for i in range(n) if i not in routed}


def edge_set(g: AttentionGraph) -> set:
    return set(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist()))


def check_well_formed(g: AttentionGraph, n: int) -> None:
    assert g.num_nodes == n and g.device.type == "cpu"
    key, query = g.edge_index
    code = (query * n + key).tolist()
    assert code == sorted(set(code))
    assert bool((g.edge_label == EdgeLabel.CLUSTER).all())
    assert bool((g.keys_per_query() >= 1).all())


def same_partition(a: list[int], b: list[int]) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def blobs(sizes, d=6, spread=0.01, seed=0, dtype=torch.float64):
    """Tight groups around random directions, interleaved positions; returns (x, group ids)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=dtype))[0][: len(sizes)]
    group = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    group = group[torch.randperm(group.numel(), generator=gen)]
    x = centers[group] + spread * torch.randn(group.numel(), d, generator=gen, dtype=dtype)
    x = x * (0.5 + torch.rand(group.numel(), 1, generator=gen, dtype=dtype))  # norms do not matter
    return x.to(dtype), group.tolist()


# ----------------------------------------------------------------------------- k-means itself
@pytest.mark.parametrize("m,d,k,iters,seed", [(1, 2, 1, 3, 0), (9, 3, 2, 0, 1), (17, 4, 3, 5, 2), (25, 3, 5, 10, 3)])
def test_spherical_kmeans_matches_oracle(m, d, k, iters, seed):
    pts = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cents, labels = spherical_kmeans(pts, num_clusters=k, iters=iters, seed=seed)
    want_cents, want_labels = oracle_kmeans(unit_rows(pts), k, iters, seed)
    assert labels.tolist() == want_labels
    assert torch.allclose(cents, torch.tensor(want_cents, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(cents.norm(dim=1), torch.ones(k, dtype=torch.float64))


def test_spherical_kmeans_recovers_blobs():
    x, group = blobs([5, 7, 4], seed=1)
    for seed in range(5):
        _, labels = spherical_kmeans(x, num_clusters=3, seed=seed)
        assert same_partition(labels.tolist(), group)


def test_spherical_kmeans_duplicate_points():
    # fewer distinct points than clusters: seeding falls back to uniform, empty clusters persist
    pts = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
    cents, labels = spherical_kmeans(pts, num_clusters=4, seed=0)
    assert cents.shape == (4, 2) and torch.isfinite(cents).all()
    assert same_partition(labels.tolist(), [0, 0, 0, 0, 1, 1])


# ----------------------------------------------------------------------------- routing graphs
CASES = [
    # n, d, num_clusters, window, iters, seed
    (1, 3, 1, None, 10, 0),
    (2, 2, 2, None, 10, 1),
    (7, 3, 2, None, 3, 2),
    (11, 4, 3, 2, 10, 3),
    (13, 3, 4, 6, 0, 4),
    (16, 5, 5, 1, 5, 5),
    (9, 2, 9, None, 2, 6),
]


@pytest.mark.parametrize("n,d,k,w,iters,seed", CASES)
def test_shared_qk_matches_oracle(n, d, k, w, iters, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = kmeans(x, num_clusters=k, cluster_size=w, iters=iters, seed=seed)
    check_well_formed(g, n)
    q = unit_rows(x)
    cents, _ = oracle_kmeans(q, k, iters, seed)
    window = w if w is not None else math.ceil(n / k)
    assert edge_set(g) == oracle_routing(q, q, cents, window)


@pytest.mark.parametrize("n,d,k,w,iters,seed", CASES)
def test_separate_keys_match_oracle(n, d, k, w, iters, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(n, d, generator=gen, dtype=torch.float64)
    g = kmeans(x, num_clusters=k, keys=keys, cluster_size=w, iters=iters, seed=seed)
    check_well_formed(g, n)
    q, kk = unit_rows(x), unit_rows(keys)
    cents, _ = oracle_kmeans(q + kk, k, iters, seed)  # clustered on the union of queries and keys
    window = w if w is not None else math.ceil(n / k)
    assert edge_set(g) == oracle_routing(q, kk, cents, window)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 4), data=st.data(), seed=st.integers(0, 2**64 - 1))
def test_random_configurations_balanced(n, d, data, seed):
    k = data.draw(st.integers(1, n))
    w = data.draw(st.one_of(st.none(), st.integers(1, n)))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed % 997), dtype=torch.float64)
    g = kmeans(x, num_clusters=k, cluster_size=w, iters=4, seed=seed)
    check_well_formed(g, n)
    window = w if w is not None else math.ceil(n / k)
    cents, _ = spherical_kmeans(x, num_clusters=k, iters=4, seed=seed)  # same draws as kmeans
    sim = (torch.nn.functional.normalize(x, dim=1) @ cents.T).tolist()
    # balanced: each cluster contributes exactly `window` queries and `window` keys
    sets = [sorted(range(n), key=lambda i: (-sim[i][c], i))[:window] for c in range(k)]
    member = [[c for c in range(k) if i in sets[c]] for i in range(n)]
    got = edge_set(g)
    for i in range(n):
        keys_i = {j for (j, q) in got if q == i}
        if member[i]:
            assert keys_i == set().union(*(sets[c] for c in member[i]))
            assert i in keys_i  # shared QK: a routed query is in its own key set
            assert len(keys_i) <= len(member[i]) * window
        else:
            assert keys_i == {i}
    assert g.num_edges <= k * window * window + n


def test_blobs_recovered_exactly():
    sizes = [6, 6, 6]
    x, group = blobs(sizes, seed=2)
    n = len(group)
    want = {(j, i) for i in range(n) for j in range(n) if group[i] == group[j]}
    for seed in range(4):
        for dtype in (torch.float64, torch.float32):
            g = kmeans(x.to(dtype), num_clusters=3, seed=seed)
            check_well_formed(g, n)
            assert edge_set(g) == want
    # separate keys from the same groups: the same block structure
    keys = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    assert edge_set(kmeans(x, keys=keys, num_clusters=3, seed=0)) == want


def test_unequal_blobs_with_large_window():
    # window >= largest group: each query still sees its whole group (plus the nearest outsiders
    # that fill the smaller clusters' windows)
    x, group = blobs([3, 5, 8], seed=4)
    n = len(group)
    g = kmeans(x, num_clusters=3, cluster_size=8, seed=0)
    got = edge_set(g)
    for i in range(n):
        for j in range(n):
            if group[i] == group[j]:
                assert (j, i) in got
    assert bool((g.keys_per_query() >= 3).all())


def test_unrouted_queries_keep_only_self_loop():
    x, group = blobs([4, 4], seed=3)
    g = kmeans(x, num_clusters=2, cluster_size=1, seed=0)  # only 2 of 8 queries are routed
    check_well_formed(g, 8)
    kpq = g.keys_per_query()
    assert int((kpq == 1).sum()) == 8
    assert edge_set(g) == {(i, i) for i in range(8)}  # shared QK, window 1: the routed one is itself


def test_n_one():
    g = kmeans(torch.randn(1, 4), num_clusters=1, seed=0)
    assert g.edge_index.tolist() == [[0], [0]]


def test_single_cluster_full_window_is_full_attention():
    n = 7
    g = kmeans(torch.randn(n, 3), num_clusters=1, seed=0)
    assert edge_set(g) == {(j, i) for i in range(n) for j in range(n)}


def test_zero_vectors_do_not_crash():
    x = torch.zeros(5, 3)
    x[0, 0] = 1.0
    g = kmeans(x, num_clusters=2, seed=0)
    check_well_formed(g, 5)


# ----------------------------------------------------------------------------- seeds
def test_seed_reproducibility():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    a = kmeans(x, num_clusters=4, seed=3)
    assert a.equals(kmeans(x, num_clusters=4, seed=3))
    assert any(not a.equals(kmeans(x, num_clusters=4, seed=s)) for s in range(4, 9))
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    b = kmeans(x, num_clusters=4, seed=g1)
    assert b.equals(kmeans(x, num_clusters=4, seed=g2))
    assert b.equals(kmeans(x, num_clusters=4, seed=seed_key(torch.Generator().manual_seed(8))))
    torch.manual_seed(5)
    c = kmeans(x, num_clusters=4, seed=None)
    torch.manual_seed(5)
    assert c.equals(kmeans(x, num_clusters=4, seed=None))
    state = torch.get_rng_state()
    kmeans(x, num_clusters=4, seed=1)
    spherical_kmeans(x, num_clusters=4, seed=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- errors
def test_errors():
    x = torch.randn(6, 3)
    with pytest.raises(TypeError, match="x"):
        kmeans([[1.0]], num_clusters=1)
    with pytest.raises(TypeError, match="x.*floating"):
        kmeans(torch.ones(6, 3, dtype=torch.int32), num_clusters=1)
    with pytest.raises(ValueError, match=r"x of shape \[n, d\]"):
        kmeans(torch.randn(6), num_clusters=1)
    with pytest.raises(ValueError, match="x with n >= 1"):
        kmeans(torch.empty(0, 3), num_clusters=1)
    with pytest.raises(ValueError, match="x with d >= 1"):
        kmeans(torch.empty(4, 0), num_clusters=1)
    with pytest.raises(ValueError, match="x to hold finite"):
        kmeans(torch.tensor([[float("inf"), 0.0]]), num_clusters=1)
    with pytest.raises(ValueError, match="num_clusters >= 1, got 0"):
        kmeans(x, num_clusters=0)
    with pytest.raises(ValueError, match="num_clusters <= n = 6.*got 7"):
        kmeans(x, num_clusters=7)
    with pytest.raises(TypeError, match="num_clusters"):
        kmeans(x, num_clusters=2.0)
    with pytest.raises(ValueError, match="iters >= 0, got -1"):
        kmeans(x, num_clusters=2, iters=-1)
    with pytest.raises(ValueError, match="cluster_size >= 1, got 0"):
        kmeans(x, num_clusters=2, cluster_size=0)
    with pytest.raises(ValueError, match="cluster_size <= 6, got 7"):
        kmeans(x, num_clusters=2, cluster_size=7)
    with pytest.raises(TypeError, match="cluster_size"):
        kmeans(x, num_clusters=2, cluster_size="3")
    with pytest.raises(TypeError, match="keys"):
        kmeans(x, num_clusters=2, keys=[[0.0] * 3] * 6)
    with pytest.raises(TypeError, match="keys.*floating"):
        kmeans(x, num_clusters=2, keys=torch.ones(6, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="keys of the same shape as x"):
        kmeans(x, num_clusters=2, keys=torch.randn(5, 3))
    with pytest.raises(ValueError, match="keys of the same shape as x"):
        kmeans(x, num_clusters=2, keys=torch.randn(6, 4))
    with pytest.raises(ValueError, match="keys to hold finite"):
        kmeans(x, num_clusters=2, keys=torch.full((6, 3), float("nan")))
    with pytest.raises(TypeError, match="seed"):
        kmeans(x, num_clusters=2, seed="0")
    with pytest.raises(TypeError):
        kmeans(x, 2)  # keyword-only


def test_spherical_kmeans_errors():
    with pytest.raises(TypeError, match="points"):
        spherical_kmeans("abc", num_clusters=1)
    with pytest.raises(ValueError, match="points with n >= 1"):
        spherical_kmeans(torch.empty(0, 2), num_clusters=1)
    with pytest.raises(ValueError, match="num_clusters <= n = 3"):
        spherical_kmeans(torch.randn(3, 2), num_clusters=4)
    with pytest.raises(ValueError, match="iters >= 0"):
        spherical_kmeans(torch.randn(3, 2), num_clusters=1, iters=-2)
