"""Sharding: every position-based rule builds, for ``queries=range(a, b)``, exactly the slice
``rule(...).query_slice(a, b)`` of the full graph (edges, labels, node types, relative ids,
head masks)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import rules

# name -> (builder taking queries=..., num_tokens, block size or None)
RULES = {
    "full": (lambda q: rules.full(9, queries=q), 9, None),
    "band": (lambda q: rules.band(13, radius=2, queries=q), 13, None),
    "band_causal": (lambda q: rules.band(13, radius=3, causal=True, queries=q), 13, None),
    "band_wide": (lambda q: rules.band(5, radius=9, queries=q), 5, None),
    "dilated": (lambda q: rules.dilated(17, radius=2, dilation=3, queries=q), 17, None),
    "dilated_causal": (lambda q: rules.dilated(17, radius=2, dilation=3, causal=True, queries=q), 17, None),
    "block_local": (lambda q: rules.block_local(13, block_size=4, queries=q), 13, 4),
    "global_tokens": (lambda q: rules.global_tokens(11, global_indices=[0, 5, 10], queries=q), 11, None),
    "global_nodes": (lambda q: rules.global_nodes(7, num_global=3, queries=q), 7, None),
    "random": (lambda q: rules.random(15, num_random_keys=4, seed=3, queries=q), 15, None),
    "erdos_renyi": (lambda q: rules.erdos_renyi(15, p=0.3, seed=3, queries=q), 15, None),
    "random_regular": (lambda q: rules.random_regular(14, degree=3, seed=3, queries=q), 14, None),
    "star": (lambda q: rules.star_transformer(6, queries=q), 6, None),
    "star_open": (lambda q: rules.star_transformer(5, cyclic=False, queries=q), 5, None),
    "star_one": (lambda q: rules.star_transformer(1, queries=q), 1, None),
    "longformer": (lambda q: rules.longformer(14, radius=1, dilation=2, global_indices=[0, 7], queries=q), 14, None),
    "longformer_heads": (lambda q: rules.longformer(14, radius=1, dilation=[1, 2, 3], global_indices=[4],
                                                    queries=q), 14, None),
    "etc": (lambda q: rules.etc(10, num_global=3, radius=2, segments=[3, 3, 4], queries=q), 10, None),
    "etc_all": (lambda q: rules.etc(10, num_global=2, radius=1, max_relative=3, queries=q), 10, None),
    "bigbird": (lambda q: rules.bigbird(4 * 9 + 3, block_size=4, seed=1, queries=q), 39, 4),
    "bigbird_wide": (lambda q: rules.bigbird(3 * 13 + 1, block_size=3, num_window_blocks=5, num_random_blocks=2,
                                             num_global_blocks=3, seed=2, queries=q), 40, 3),
    "bigbird_short": (lambda q: rules.bigbird(10, block_size=4, seed=1, queries=q), 10, 4),
    "bigbird_etc": (lambda q: rules.bigbird_etc(4 * 9 + 3, block_size=4, num_global=2, seed=1, queries=q), 39, 4),
    "bp_transformer": (lambda q: rules.bp_transformer(13, k=2, queries=q), 13, None),
    "bp_transformer_causal": (lambda q: rules.bp_transformer(16, k=1, causal=True, queries=q), 16, None),
}


def ranges_for(num_nodes: int, num_tokens: int, block: int | None) -> list[tuple[int, int]]:
    N, n = num_nodes, num_tokens
    cand = [(0, 0), (N, N), (N // 2, N // 2), (0, 1), (N - 1, N), (0, N), (1, N - 1), (2, 5),
            (n - 1, n), (0, n)]
    if N > n:  # ranges over the extra nodes, and crossing from tokens into them
        cand += [(n, N), (n, n + 1), (n - 2, n + 1), (N - 2, N)]
    if block:  # ranges crossing block borders, and exactly one block
        cand += [(block - 1, block + 2), (2 * block - 1, 3 * block + 1), (block, 2 * block),
                 (block + 1, block + 2), (n - n % block - 1, n)]
    out = []
    for a, b in cand:
        a, b = max(0, min(a, N)), max(0, min(b, N))
        if a <= b and (a, b) not in out:
            out.append((a, b))
    return out


CASES = []
for _name, (_make, _n, _block) in RULES.items():
    _N = _make(None).num_nodes
    CASES += [(_name, a, b) for a, b in ranges_for(_N, _n, _block)]


@pytest.mark.parametrize("name,a,b", CASES)
def test_queries_equals_query_slice(name, a, b):
    make = RULES[name][0]
    whole = make(None)
    part = make(range(a, b))
    assert part.num_nodes == whole.num_nodes
    assert part.equals(whole.query_slice(a, b)), (name, a, b)
    if b > a:
        q = part.edge_index[1]
        assert part.num_edges == 0 or (int(q.min()) >= a and int(q.max()) < b)


@pytest.mark.parametrize("name", sorted(RULES))
def test_shards_concatenate_to_the_whole(name):
    make = RULES[name][0]
    whole = make(None)
    N = whole.num_nodes
    cuts = sorted({0, N, N // 3, (2 * N) // 3})
    from graphattn.compose import union

    parts = [make(range(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]
    assert union(*parts).equals(whole)
    assert sum(p.num_edges for p in parts) == whole.num_edges


# ----------------------------------------------------------------------------- properties
@st.composite
def query_range(draw, num_nodes: int):
    a = draw(st.integers(0, num_nodes))
    b = draw(st.integers(a, num_nodes))
    return range(a, b)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), n=st.integers(0, 60), radius=st.integers(0, 12), causal=st.booleans())
def test_band_sharding_property(data, n, radius, causal):
    q = data.draw(query_range(n))
    whole = rules.band(n, radius=radius, causal=causal)
    assert rules.band(n, radius=radius, causal=causal, queries=q).equals(whole.query_slice(q.start, q.stop))


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), n=st.integers(0, 90), block=st.integers(1, 9), half_window=st.integers(0, 2),
       random_blocks=st.integers(0, 3), global_blocks=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_bigbird_sharding_property(data, n, block, half_window, random_blocks, global_blocks, seed):
    q = data.draw(query_range(n))
    kw = dict(block_size=block, num_window_blocks=2 * half_window + 1, num_random_blocks=random_blocks,
              num_global_blocks=global_blocks, seed=seed)
    whole = rules.bigbird(n, **kw)
    assert rules.bigbird(n, queries=q, **kw).equals(whole.query_slice(q.start, q.stop))


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), n=st.integers(1, 60), seed=st.integers(-2**40, 2**40))
def test_random_sharding_property(data, n, seed):
    r = data.draw(st.integers(0, n - 1))
    q = data.draw(query_range(n))
    whole = rules.random(n, num_random_keys=r, seed=seed)
    assert rules.random(n, num_random_keys=r, seed=seed, queries=q).equals(whole.query_slice(q.start, q.stop))


def test_every_rule_taking_queries_has_a_case():
    """A new rule with a ``queries=`` hook that no case above builds fails here."""
    import inspect

    takes = {name for name in rules.RULES if "queries" in inspect.signature(getattr(rules, name)).parameters}
    built = {name for make, _, _ in RULES.values() for name in make.__code__.co_names if name in rules.RULES}
    assert takes <= built, f"rules without a sharding case: {sorted(takes - built)}"
