"""Tests for graphattn.rules.random: random, erdos_renyi, random_regular."""

from __future__ import annotations

import itertools
import math
import random as pyrandom

import networkx as nx
import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import erdos_renyi, full, random, random_regular


# ----------------------------------------------------------------------------- helpers
def edge_set(g: AttentionGraph) -> set[tuple[int, int]]:
    return set(zip(*g.edge_index.tolist()))


def check_invariants(g: AttentionGraph, n: int) -> None:
    assert g.num_nodes == n and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n
    assert g.edge_index.dtype == torch.int64
    code = g.edge_index[1] * max(n, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all()), "edges must be sorted by (query, key) and unique"
    assert set(g.edge_label.tolist()) <= {int(EdgeLabel.RANDOM)}
    if g.num_edges:
        assert 0 <= int(g.edge_index.min()) and int(g.edge_index.max()) < n
    # every token keeps its self-loop
    assert {(i, i) for i in range(n)} <= edge_set(g)


def rows_of(g: AttentionGraph) -> list[list[int]]:
    out = [[] for _ in range(g.num_nodes)]
    for j, i in zip(*g.edge_index.tolist()):
        out[i].append(j)
    return out


def chi2_upper(dof: int, z: float = 5.0) -> float:
    """Upper quantile of chi-square(dof) at a one-sided normal z (Wilson-Hilferty); z=5 is p~3e-7."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_stat(counts, expected) -> float:
    return sum((c - e) ** 2 / e for c, e in zip(counts, expected))


# ----------------------------------------------------------------------------- random
@pytest.mark.parametrize("n,r", [(0, 0), (1, 0), (2, 0), (2, 1), (5, 2), (5, 4), (7, 3), (31, 6), (64, 63)])
def test_random_rows_have_r_distinct_non_self_keys_plus_self(n, r):
    g = random(n, num_random_keys=r, seed=123)
    check_invariants(g, n)
    assert g.keys_per_query().tolist() == [r + 1] * n
    for i, keys in enumerate(rows_of(g)):
        assert keys == sorted(set(keys))
        others = [j for j in keys if j != i]
        assert len(others) == r and i in keys


def test_random_all_other_keys_is_full():
    n = 9
    assert edge_set(random(n, num_random_keys=n - 1, seed=5)) == edge_set(full(n))


def test_random_zero_keys_is_self_loops():
    g = random(8, num_random_keys=0, seed=5)
    assert g.edge_index.tolist() == [list(range(8)), list(range(8))]


def pair_counts(sampler, n: int, seeds) -> dict[tuple[int, int], int]:
    counts = {(i, j): 0 for i in range(n) for j in range(n) if i != j}
    for s in seeds:
        for i, keys in enumerate(sampler(s)):
            for j in keys:
                if j != i:
                    counts[(i, j)] += 1
    return counts


def pair_chi2(counts: dict, n: int, r: int, num_seeds: int) -> float:
    e = num_seeds * r / (n - 1)
    return chi2_stat(counts.values(), [e] * len(counts))


def test_random_uniform_over_query_key_pairs():
    n, r, seeds = 20, 3, range(300)
    counts = pair_counts(lambda s: rows_of(random(n, num_random_keys=r, seed=s)), n, seeds)
    dof = n * (n - 2)  # each row's counts sum to len(seeds) * r
    assert pair_chi2(counts, n, r, len(seeds)) < chi2_upper(dof)
    # The same statistic rejects biased samplers: always the first keys, or the next keys.
    first = lambda s: [[j for j in range(n) if j != i][:r] for i in range(n)]  # noqa: E731
    nxt = lambda s: [[(i + t) % n for t in range(1, r + 1)] for i in range(n)]  # noqa: E731
    for biased in (first, nxt):
        assert pair_chi2(pair_counts(biased, n, seeds), n, r, len(seeds)) > chi2_upper(dof)
    # and a sampler that is uniform except for a mild preference for key 0
    rng = pyrandom.Random(0)

    def mild(s):
        out = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            keys = rng.sample(others, r)
            if i != 0 and 0 not in keys and rng.random() < 0.5:
                keys[0] = 0
            out.append(keys)
        return out

    assert pair_chi2(pair_counts(mild, n, seeds), n, r, len(seeds)) > chi2_upper(dof)


def test_random_uniform_over_key_subsets():
    # Without replacement and uniform: each row's key set is a uniform r-subset of the others.
    # Seeds are multiples of 8 so that no (seed, row) pair shares seed ^ row with another (see
    # test_seed_and_row_are_not_interchangeable for that defect); this test checks Floyd sampling.
    n, r, seeds = 8, 2, range(0, 8 * 400, 8)
    counts: dict[tuple[int, ...], int] = {}
    for s in seeds:
        for i, keys in enumerate(rows_of(random(n, num_random_keys=r, seed=s))):
            others = tuple(sorted(k - (k > i) for k in keys if k != i))  # rank among the others
            counts[others] = counts.get(others, 0) + 1
    subsets = list(itertools.combinations(range(n - 1), r))
    assert set(counts) <= set(subsets)
    total = len(seeds) * n
    stat = chi2_stat([counts.get(c, 0) for c in subsets], [total / len(subsets)] * len(subsets))
    assert stat < chi2_upper(len(subsets) - 1)


def test_random_offsets_uniform_in_one_large_graph():
    n, r, buckets = 3000, 8, 30
    g = random(n, num_random_keys=r, seed=2024)
    key, query = g.edge_index
    off = ((key - query) % n)[key != query]  # in [1, n)
    hist = torch.bincount((off - 1) * buckets // (n - 1), minlength=buckets).tolist()
    assert sum(hist) == n * r
    assert chi2_stat(hist, [n * r / buckets] * buckets) < chi2_upper(buckets - 1)
    # in-degree of keys (column counts) ~ Binomial(n - 1, r / (n - 1)): mean r, variance ~ r
    cols = torch.bincount(key[key != query], minlength=n).double()
    assert abs(float(cols.mean()) - r) < 1e-9
    assert 0.7 * r < float(cols.var()) < 1.3 * r


def _ranks(i: int, keys) -> list[int]:
    """A row's non-self keys as ranks among the other n - 1 tokens (what the sampler draws)."""
    return sorted(k - (k > i) for k in keys if k != i)


@pytest.mark.parametrize("rule", ["random", "erdos_renyi"])
@pytest.mark.parametrize("s1,s2", [(0, 1), (5, 9), (100, 103)])
def test_seed_and_row_are_not_interchangeable(rule, s1, s2):
    # Draws for (seed s1, row i) must be independent of those for (seed s2, row i ^ s1 ^ s2).
    # A hash that combines seed and row by XOR before mixing makes them identical, so the
    # graphs of seeds 0 and 1 are the same graph with rows swapped pairwise.
    n = 64
    make = (lambda s: random(n, num_random_keys=4, seed=s)) if rule == "random" else (
        lambda s: erdos_renyi(n, p=0.1, seed=s))
    a, b = rows_of(make(s1)), rows_of(make(s2))
    x = s1 ^ s2
    same = sum(_ranks(i, a[i]) == _ranks(i ^ x, b[i ^ x]) for i in range(n) if i ^ x < n)
    assert same <= 3, f"{same} of {n} rows coincide between seed {s1} and seed {s2}"


# ----------------------------------------------------------------------------- erdos_renyi
@pytest.mark.parametrize("n", [0, 1, 2, 7, 30])
def test_erdos_renyi_p0_self_loops_and_p1_full(n):
    g0 = erdos_renyi(n, p=0.0, seed=1)
    check_invariants(g0, n)
    assert edge_set(g0) == {(i, i) for i in range(n)}
    g1 = erdos_renyi(n, p=1.0, seed=1)
    check_invariants(g1, n)
    assert edge_set(g1) == edge_set(full(n)) and g1.num_edges == n * n
    assert erdos_renyi(n, p=0, seed=1).equals(g0) and erdos_renyi(n, p=1, seed=1).equals(g1)


def test_erdos_renyi_tiny_p_small_graph():
    g = erdos_renyi(40, p=1e-12, seed=3)
    assert edge_set(g) == {(i, i) for i in range(40)}


@pytest.mark.parametrize("n,p", [(2, 0.5), (5, 0.3), (17, 0.5), (50, 0.9)])
def test_erdos_renyi_invariants(n, p):
    for seed in range(5):
        check_invariants(erdos_renyi(n, p=p, seed=seed), n)


def test_erdos_renyi_statistics():
    n, p = 2000, 0.05
    g = erdos_renyi(n, p=p, seed=7)
    check_invariants(g, n)
    key, query = g.edge_index
    non_self = key != query
    pairs = n * (n - 1)
    m = int(non_self.sum())
    # total non-self edges ~ Binomial(n(n-1), p): within 6 standard deviations of the mean
    mean, sd = pairs * p, math.sqrt(pairs * p * (1 - p))
    assert abs(m - mean) < 6 * sd, (m, mean, sd)
    # mean degree 1 + (n-1)p
    deg = g.keys_per_query().double()
    assert abs(float(deg.mean()) - (1 + (n - 1) * p)) < 6 * sd / n
    # row degrees ~ 1 + Binomial(n-1, p): the sample variance is near (n-1)p(1-p) (sd ~ 3%)
    var = (n - 1) * p * (1 - p)
    assert 0.8 * var < float(deg.var()) < 1.2 * var
    # keys uniform over offsets (a skip sampler biased to early or late candidates fails this)
    buckets = 20
    off = ((key - query) % n)[non_self]
    hist = torch.bincount((off - 1) * buckets // (n - 1), minlength=buckets).tolist()
    assert chi2_stat(hist, [m / buckets] * buckets) < chi2_upper(buckets - 1)
    # and over absolute key positions too
    pos = torch.bincount(key[non_self] * buckets // n, minlength=buckets).tolist()
    assert chi2_stat(pos, [m / buckets] * buckets) < chi2_upper(buckets - 1)


def test_erdos_renyi_pair_probability_small_graph():
    # Each ordered pair appears with probability p across seeds.
    n, p, seeds = 6, 0.3, range(400)
    counts = {(j, i): 0 for i in range(n) for j in range(n) if i != j}
    for s in seeds:
        for e in edge_set(erdos_renyi(n, p=p, seed=s)):
            if e[0] != e[1]:
                counts[e] += 1
    t = len(seeds)
    sd = math.sqrt(t * p * (1 - p))
    assert all(abs(c - t * p) < 5 * sd for c in counts.values()), counts
    total = sum(counts.values())
    assert abs(total - t * p * len(counts)) < 5 * math.sqrt(len(counts)) * sd


# ----------------------------------------------------------------------------- random_regular
@pytest.mark.parametrize("n,degree", [(1, 0), (2, 1), (4, 3), (5, 0), (5, 2), (5, 4), (6, 3), (10, 3), (11, 4), (20, 7), (64, 5)])
def test_random_regular(n, degree):
    g = random_regular(n, degree=degree, seed=11)
    check_invariants(g, n)
    assert g.keys_per_query().tolist() == [degree + 1] * n
    edges = edge_set(g)
    assert edges == {(b, a) for a, b in edges}, "symmetric"
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from((a, b) for a, b in edges if a != b)
    assert G.number_of_edges() == n * degree // 2
    assert nx.is_regular(G) and all(d == degree for _, d in G.degree())
    assert nx.number_of_selfloops(G) == 0


def test_random_regular_complete_and_empty():
    assert edge_set(random_regular(6, degree=5, seed=0)) == edge_set(full(6))
    assert edge_set(random_regular(6, degree=0, seed=0)) == {(i, i) for i in range(6)}


def test_random_regular_zero_nodes():
    # n = 0 is accepted by the argument checks (degree < n is only required when n > 0) and
    # every other rule returns an empty graph for n = 0.
    g = random_regular(0, degree=0, seed=0)
    assert g.num_nodes == 0 and g.num_edges == 0


def test_random_regular_varies_with_seed():
    graphs = {tuple(map(tuple, random_regular(30, degree=3, seed=s).edge_index.tolist())) for s in range(6)}
    assert len(graphs) > 1


# ----------------------------------------------------------------------------- seeds
RULES = {
    "random": lambda seed: random(40, num_random_keys=3, seed=seed),
    "erdos_renyi": lambda seed: erdos_renyi(40, p=0.2, seed=seed),
    "random_regular": lambda seed: random_regular(40, degree=3, seed=seed),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_same_int_seed_same_graph(name):
    make = RULES[name]
    for s in (0, 1, 2**40 + 3, -5):
        assert make(s).equals(make(s))


@pytest.mark.parametrize("name", sorted(RULES))
def test_different_seeds_differ(name):
    make = RULES[name]
    graphs = [make(s) for s in range(4)]
    for a, b in itertools.combinations(graphs, 2):
        assert not a.equals(b)


@pytest.mark.parametrize("name", sorted(RULES))
def test_seeds_equal_mod_2_32_differ(name):
    # Seeds are 64-bit keys ("reduced mod 2**64"): seeds that agree in their low 32 bits are
    # still different seeds.
    make = RULES[name]
    assert not make(1).equals(make(1 + 2**32))


@pytest.mark.parametrize("name", sorted(RULES))
def test_generator_seed(name):
    make = RULES[name]
    a = make(torch.Generator().manual_seed(77))
    b = make(torch.Generator().manual_seed(77))
    assert a.equals(b)
    c = make(torch.Generator().manual_seed(78))
    assert not a.equals(c)
    # seed=None draws from torch's default generator, the same way.
    state = torch.get_rng_state()
    try:
        torch.manual_seed(77)
        assert make(None).equals(a)
    finally:
        torch.set_rng_state(state)


@pytest.mark.parametrize("name", sorted(RULES))
def test_seed_none_works(name):
    make = RULES[name]
    g = make(None)
    check_invariants(g, 40)


@pytest.mark.parametrize("name", sorted(RULES))
def test_int_seed_leaves_global_rng_untouched(name):
    make = RULES[name]
    torch_state = torch.get_rng_state()
    py_state = pyrandom.getstate()
    make(3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert pyrandom.getstate() == py_state


@pytest.mark.parametrize("name", sorted(RULES))
def test_generator_advances_only_the_generator(name):
    make = RULES[name]
    torch_state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(1)
    before = gen.get_state()
    make(gen)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert not torch.equal(gen.get_state(), before)
