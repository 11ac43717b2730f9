"""Tests for graphattn.rules.lsh (Reformer angular-LSH attention)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn._random import seed_key
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules.hashing import lsh, lsh_buckets


# ----------------------------------------------------------------------------- oracles
def oracle_buckets(x: torch.Tensor, num_buckets: int, num_hashes: int, seed: int) -> list[list[int]]:
    """Re-derive the hash with plain Python arithmetic from the documented generator draws."""
    gen = torch.Generator().manual_seed(seed_key(seed))
    rot = torch.randn(num_hashes, x.shape[1], num_buckets // 2, generator=gen, dtype=torch.float64).tolist()
    rows = x.double().tolist()
    out = []
    for r in range(num_hashes):
        round_ = []
        for v in rows:
            proj = [sum(v[t] * rot[r][t][k] for t in range(len(v))) for k in range(num_buckets // 2)]
            vals = proj + [-p for p in proj]
            round_.append(max(range(num_buckets), key=lambda k: (vals[k], -k)))  # first max wins
        out.append(round_)
    return out


def with_fallback_loops(edges: set, n: int) -> set:
    """Add the self-loop of every query that has no key."""
    has_key = {i for (_, i) in edges}
    return edges | {(i, i) for i in range(n) if i not in has_key}


def oracle_exact(buckets: list[list[int]], n: int) -> set:
    edges = set()
    for b in buckets:
        for i in range(n):
            for j in range(n):
                if i != j and b[i] == b[j]:
                    edges.add((j, i))
    return with_fallback_loops(edges, n)


def oracle_chunked(buckets: list[list[int]], n: int, chunk: int) -> set:
    edges = set()
    for b in buckets:
        order = sorted(range(n), key=lambda t: (b[t], t))
        chunks = [order[s:s + chunk] for s in range(0, n, chunk)]
        for k, members in enumerate(chunks):
            visible = members + chunks[k - 1]  # k - 1 == -1 wraps to the last chunk
            for i in members:
                for j in visible:
                    if i != j:
                        edges.add((j, i))
    return with_fallback_loops(edges, n)


def edge_set(g: AttentionGraph) -> set:
    return set(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist()))


def check_well_formed(g: AttentionGraph, n: int) -> None:
    assert g.num_nodes == n
    assert g.device.type == "cpu"
    assert g.edge_index.dtype == torch.int64
    key, query = g.edge_index
    code = (query * max(n, 1) + key).tolist()
    assert code == sorted(set(code))  # unique and sorted by (query, key)
    assert bool((g.edge_label == EdgeLabel.BUCKET).all())
    kpq = g.keys_per_query()
    assert bool((kpq >= 1).all())  # every query has a key
    loops = key == query
    # a self-loop only where it is the query's only key
    assert bool((kpq[query[loops]] == 1).all())


# ----------------------------------------------------------------------------- buckets
@pytest.mark.parametrize("n,d,b,h,seed", [(1, 3, 2, 1, 0), (7, 3, 4, 3, 1), (13, 5, 8, 2, 2), (20, 2, 6, 4, 3)])
def test_buckets_match_python_rederivation(n, d, b, h, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    got = lsh_buckets(x, num_buckets=b, num_hashes=h, seed=seed)
    assert got.shape == (h, n) and got.dtype == torch.int64
    assert got.tolist() == oracle_buckets(x, b, h, seed)
    assert int(got.min()) >= 0 and int(got.max()) < b


def test_buckets_direction_only():
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = lsh_buckets(x, num_buckets=6, num_hashes=3, seed=5)
    assert torch.equal(b, lsh_buckets(3.5 * x, num_buckets=6, num_hashes=3, seed=5))  # scale-invariant
    # the negated vector lands in the antipodal bucket: argmax of [-xR ; xR] is shifted by b/2
    assert torch.equal((b + 3) % 6, lsh_buckets(-x, num_buckets=6, num_hashes=3, seed=5))


def test_buckets_float32_runs_in_float32():
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(1))
    b32 = lsh_buckets(x, num_buckets=4, num_hashes=2, seed=0)
    b64 = lsh_buckets(x.double(), num_buckets=4, num_hashes=2, seed=0)
    assert b32.shape == b64.shape == (2, 11)
    assert (b32 == b64).float().mean() > 0.9  # same rotations; only near-ties could differ


# ----------------------------------------------------------------------------- graphs vs oracles
CASES = [
    # n, d, num_buckets, num_hashes, seed
    (1, 3, 2, 1, 0),
    (2, 2, 2, 1, 1),
    (5, 3, 2, 1, 2),
    (9, 4, 4, 3, 3),
    (17, 3, 8, 2, 4),
    (23, 5, 6, 4, 5),
]


@pytest.mark.parametrize("n,d,b,h,seed", CASES)
def test_exact_matches_oracle(n, d, b, h, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = lsh(x, num_buckets=b, num_hashes=h, seed=seed)
    check_well_formed(g, n)
    assert edge_set(g) == oracle_exact(oracle_buckets(x, b, h, seed), n)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 50])
@pytest.mark.parametrize("n,d,b,h,seed", CASES)
def test_chunked_matches_oracle(n, d, b, h, seed, chunk):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = lsh(x, num_buckets=b, num_hashes=h, chunk=chunk, seed=seed)
    check_well_formed(g, n)
    assert edge_set(g) == oracle_chunked(oracle_buckets(x, b, h, seed), n, chunk)
    assert bool((g.keys_per_query() <= max(1, min(n - 1, h * (2 * chunk - 1)))).all())


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 14), d=st.integers(1, 4), half=st.integers(1, 4), h=st.integers(1, 3),
    chunk=st.one_of(st.none(), st.integers(1, 6)), seed=st.integers(0, 2**64 - 1),
)
def test_random_configurations_match_oracle(n, d, half, h, chunk, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed % 1000), dtype=torch.float64)
    g = lsh(x, num_buckets=2 * half, num_hashes=h, chunk=chunk, seed=seed)
    check_well_formed(g, n)
    buckets = lsh_buckets(x, num_buckets=2 * half, num_hashes=h, seed=seed).tolist()
    want = oracle_exact(buckets, n) if chunk is None else oracle_chunked(buckets, n, chunk)
    assert edge_set(g) == want


def test_n_one_keeps_self_loop():
    for chunk in (None, 1, 4):
        g = lsh(torch.randn(1, 3), num_buckets=2, chunk=chunk, seed=0)
        assert g.edge_index.tolist() == [[0], [0]]


def test_n_zero_is_empty():
    g = lsh(torch.empty(0, 3), num_buckets=4, num_hashes=2, seed=0)
    assert g.num_nodes == 0 and g.num_edges == 0
    assert lsh_buckets(torch.empty(0, 3), num_buckets=4, num_hashes=2, seed=0).shape == (2, 0)


def test_n_smaller_than_chunk_is_full_without_self():
    n = 5
    g = lsh(torch.randn(n, 3), num_buckets=4, chunk=8, seed=0)
    assert edge_set(g) == {(j, i) for i in range(n) for j in range(n) if i != j}


def test_two_chunks_see_everything():
    # two chunks look back at each other (wrap-around): every other token is a key
    n = 8
    g = lsh(torch.randn(n, 3), num_buckets=2, chunk=4, seed=3)
    assert edge_set(g) == {(j, i) for i in range(n) for j in range(n) if i != j}


def test_exact_groups_by_direction():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-0.5, 0.0], [3.0, 0.0]])
    g = lsh(x, num_buckets=2, num_hashes=3, seed=7)
    pos, neg = [0, 2, 4], [1, 3]
    want = {(j, i) for grp in (pos, neg) for i in grp for j in grp if i != j}
    assert edge_set(g) == want


def test_isolated_token_keeps_only_self_loop():
    # token 2 points away from the others: with 2 buckets it never shares one
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    g = lsh(x, num_buckets=2, num_hashes=2, seed=0)
    assert edge_set(g) == {(1, 0), (0, 1), (2, 2)}


def test_more_rounds_only_add_edges():
    x = torch.randn(15, 4, generator=torch.Generator().manual_seed(2))
    # the graph is the union over rounds: each round's own bucket pairs are all present
    buckets = lsh_buckets(x, num_buckets=4, num_hashes=3, seed=9)
    g = lsh(x, num_buckets=4, num_hashes=3, seed=9)
    for r in range(3):
        one = oracle_exact([buckets[r].tolist()], 15)
        assert {(j, i) for (j, i) in one if i != j} <= edge_set(g)


def test_keys_per_query_exact_formula():
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(4))
    b = lsh_buckets(x, num_buckets=4, seed=1)[0]
    g = lsh(x, num_buckets=4, seed=1)
    size = torch.bincount(b, minlength=4)[b]
    assert torch.equal(g.keys_per_query(), torch.where(size > 1, size - 1, torch.ones_like(size)))


# ----------------------------------------------------------------------------- seeds
def test_same_int_seed_same_graph_and_different_seeds_differ():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    for chunk in (None, 4):
        a = lsh(x, num_buckets=8, num_hashes=2, chunk=chunk, seed=11)
        assert a.equals(lsh(x, num_buckets=8, num_hashes=2, chunk=chunk, seed=11))
        assert not a.equals(lsh(x, num_buckets=8, num_hashes=2, chunk=chunk, seed=12))


def test_generator_seed():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = lsh(x, num_buckets=8, num_hashes=2, seed=g1)
    assert a.equals(lsh(x, num_buckets=8, num_hashes=2, seed=g2))  # identically seeded: same graph
    # a generator is advanced like any torch random call: the next call draws new rotations
    assert not lsh_buckets(x, num_buckets=8, num_hashes=2, seed=g1).equal(
        lsh_buckets(x, num_buckets=8, num_hashes=2, seed=torch.Generator().manual_seed(5)))
    # the generator path is the int path with the key drawn from the generator
    key = seed_key(torch.Generator().manual_seed(5))
    assert a.equals(lsh(x, num_buckets=8, num_hashes=2, seed=key))


def test_seed_none_uses_default_generator_and_int_seed_leaves_it_alone():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    a = lsh(x, num_buckets=4, chunk=3, seed=None)
    torch.manual_seed(123)
    assert a.equals(lsh(x, num_buckets=4, chunk=3, seed=None))
    state = torch.get_rng_state()
    lsh(x, num_buckets=4, num_hashes=2, seed=3)
    lsh(x, num_buckets=4, num_hashes=2, seed=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def test_requires_grad_input_and_half_precision():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = lsh(x, num_buckets=4, seed=0)
    check_well_formed(g, 10)
    gh = lsh(x.detach().half(), num_buckets=4, seed=0, chunk=3)
    check_well_formed(gh, 10)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [lsh, lsh_buckets])
def test_errors(fn):
    x = torch.randn(6, 3)
    with pytest.raises(TypeError, match="x"):
        fn([[1.0, 2.0]], num_buckets=2)
    with pytest.raises(TypeError, match="x.*floating"):
        fn(torch.ones(4, 2, dtype=torch.int64), num_buckets=2)
    with pytest.raises(ValueError, match=r"x of shape \[n, d\]"):
        fn(torch.randn(6), num_buckets=2)
    with pytest.raises(ValueError, match="x with d >= 1"):
        fn(torch.randn(6, 0), num_buckets=2)
    with pytest.raises(ValueError, match="x to hold finite"):
        fn(torch.tensor([[1.0, float("nan")]]), num_buckets=2)
    with pytest.raises(ValueError, match="num_buckets >= 2, got 1"):
        fn(x, num_buckets=1)
    with pytest.raises(ValueError, match="num_buckets to be even.*got 5"):
        fn(x, num_buckets=5)
    with pytest.raises(TypeError, match="num_buckets"):
        fn(x, num_buckets=4.0)
    with pytest.raises(ValueError, match="num_hashes >= 1, got 0"):
        fn(x, num_buckets=4, num_hashes=0)
    with pytest.raises(TypeError, match="num_hashes"):
        fn(x, num_buckets=4, num_hashes="2")
    with pytest.raises(TypeError, match="seed"):
        fn(x, num_buckets=4, seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        fn(x, num_buckets=4, seed=True)


def test_chunk_errors():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="chunk >= 1, got 0"):
        lsh(x, num_buckets=2, chunk=0)
    with pytest.raises(TypeError, match="chunk"):
        lsh(x, num_buckets=2, chunk=2.0)
    with pytest.raises(TypeError):
        lsh(x, 2)  # keyword-only
