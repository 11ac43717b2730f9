"""Memory checked before it is spent: every rule (and the compose operations that build big
graphs) estimates its peak allocation and refuses, before allocating, a request above the
budget; the estimate bounds the real peak, measured from the profiler's allocation trace."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import graphattn.compose
import graphattn.graph
import graphattn.rules._build
from graphattn import compose, rules
from graphattn._memory import MemoryBudgetError, memory_limit

X = torch.randn(1500, 16, generator=torch.Generator().manual_seed(0))


def edges(g):
    """Read a structured graph's edges (band, dilated, lifted block graphs build them on first
    read: that is where their memory is spent and checked)."""
    g.edge_index
    return g

# name -> builder at a size where the edges dominate the allocations (tens of MB at most)
CASES = {
    "full": lambda: rules.full(500),
    "band": lambda: edges(rules.band(30_000, radius=8)),
    "dilated": lambda: edges(rules.dilated(30_000, radius=4, dilation=3)),
    "block_local": lambda: edges(rules.block_local(30_000, block_size=16)),
    "global_tokens": lambda: rules.global_tokens(20_000, global_indices=[0, 9, 500]),
    "global_nodes": lambda: rules.global_nodes(20_000, num_global=4),
    "random": lambda: rules.random(20_000, num_random_keys=16, seed=0),
    "erdos_renyi": lambda: rules.erdos_renyi(20_000, p=16 / 20_000, seed=0),
    "random_regular": lambda: rules.random_regular(2_000, degree=6, seed=0),
    "star_transformer": lambda: rules.star_transformer(30_000),
    "longformer": lambda: rules.longformer(20_000, radius=16, global_indices=[0, 7]),
    "longformer_heads": lambda: rules.longformer(10_000, radius=8, dilation=[1, 2], global_indices=[3]),
    "etc": lambda: rules.etc(10_000, num_global=8, radius=16),
    "bigbird": lambda: edges(rules.bigbird(10_000, block_size=16, seed=0)),
    "bigbird_etc": lambda: rules.bigbird_etc(10_000, block_size=16, seed=0),
    "bp_transformer": lambda: rules.bp_transformer(10_000, k=2),
    "lsh": lambda: rules.lsh(X, num_buckets=8, num_hashes=2, seed=0),
    "lsh_chunked": lambda: rules.lsh(X, num_buckets=8, num_hashes=2, chunk=32, seed=0),
    "kmeans": lambda: rules.kmeans(X, num_clusters=8, iters=2, seed=0),
    "lift_blocks": lambda: edges(compose.lift_blocks(rules.band(500, radius=1), block_size=32, num_tokens=16_000)),
    "batch": lambda: compose.batch([BATCH_OPERAND] * 3)[0],
    "union": lambda: compose.union(*UNION_OPERANDS),
}
BATCH_OPERAND = rules.band(10_000, radius=8)
UNION_OPERANDS = (rules.band(20_000, radius=4), rules.dilated(20_000, radius=4, dilation=3),
                  rules.global_tokens(20_000, global_indices=[5]))


def test_every_rule_has_a_case():
    names = {name.split("_heads")[0].split("_chunked")[0] for name in CASES}
    assert set(rules.RULES) <= names


@pytest.fixture
def estimates(monkeypatch):
    """The estimates every check_memory call of the graph side received, in order."""
    seen = []
    for module in (graphattn.rules._build, graphattn.compose, graphattn.graph):
        original = module.check_memory

        def record(what, estimate, device=None, original=original):
            seen.append(estimate)
            return original(what, estimate, device)

        monkeypatch.setattr(module, "check_memory", record)
    return seen


def _peak_bytes(fn) -> int:
    """Largest total of live torch CPU allocations made while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    del out
    return peak


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimate_bounds_the_real_peak(name, estimates):
    build = CASES[name]
    build()  # warm-up: one-time allocations are not the rule's
    estimates.clear()
    peak = _peak_bytes(build)
    assert estimates, f"{name} never checked its memory"
    estimate = max(estimates)
    assert peak <= 1.1 * estimate, (name, peak, estimate)
    with memory_limit(estimate):  # a budget of exactly the estimate is enough
        build()


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_before_allocating_under_a_small_budget(name):
    with memory_limit("64K"), pytest.raises(MemoryBudgetError, match=r"need an estimated .* budget \(memory_limit\)"):
        CASES[name]()


@pytest.mark.parametrize("call, request_text", [
    (lambda: rules.full(10**6), "rules.full(n=1000000): 1,000,000,000,000 edges"),
    (lambda: rules.band(10**9, radius=10**4).edge_index,
     "the edges of a window graph (n=1000000000, 20001 offsets): 20,000,899,990,000 edges"),
    (lambda: rules.bigbird(10**7, block_size=64, seed=0).edge_index,
     "the edges of a block-lifted graph (n=10000000, block_size=64)"),
    (lambda: rules.bigbird(10**11, block_size=64, seed=0), "rules.bigbird(n=100000000000, block_size=64): its block graph"),
    (lambda: rules.random(10**8, num_random_keys=64, seed=0), "rules.random(n=100000000, num_random_keys=64)"),
])
def test_huge_requests_answer_at_once(call, request_text):
    with memory_limit("1G"), pytest.raises(MemoryBudgetError) as err:
        call()
    message = str(err.value)
    assert request_text in message and "need an estimated" in message and "1.0 GB budget" in message


@pytest.mark.parametrize("build", [
    lambda radius: rules.band(7, radius=radius),
    lambda radius: rules.band(7, radius=radius, causal=True),
    lambda radius: rules.dilated(7, radius=radius, dilation=2),
    lambda radius: rules.longformer(7, radius=radius, global_indices=[2]),
    lambda radius: rules.etc(7, num_global=2, radius=radius, max_relative=3),
], ids=["band", "band_causal", "dilated", "longformer", "etc"])
def test_a_radius_beyond_the_sequence_is_the_whole_sequence(build):
    """Offsets that reach no key cost nothing: a radius of 2^40 on 7 tokens is radius 6, built
    at once (an unclamped window would ask for terabytes)."""
    with memory_limit("16M"):
        huge = build(2**40)
        assert torch.equal(huge.edge_index, build(6).edge_index)
