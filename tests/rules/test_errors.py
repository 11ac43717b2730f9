"""Every error path of the position-based rules: a TypeError or ValueError naming the parameter."""

from __future__ import annotations

import math

import pytest
import torch

from graphattn import rules

R = rules  # short alias for the tables below

# (id, callable, exception, regex that must name the parameter)
CASES = [
    # ---- negative or too-small n
    ("full-n", lambda: R.full(-1), ValueError, r"\bn\b"),
    ("band-n", lambda: R.band(-1, radius=1), ValueError, r"\bn\b"),
    ("dilated-n", lambda: R.dilated(-1, radius=1, dilation=2), ValueError, r"\bn\b"),
    ("block_local-n", lambda: R.block_local(-1, block_size=2), ValueError, r"\bn\b"),
    ("global_tokens-n", lambda: R.global_tokens(-1, global_indices=[]), ValueError, r"\bn\b"),
    ("global_nodes-n", lambda: R.global_nodes(-1, num_global=1), ValueError, r"\bn\b"),
    ("random-n", lambda: R.random(-1, num_random_keys=0, seed=0), ValueError, r"\bn\b"),
    ("erdos_renyi-n", lambda: R.erdos_renyi(-1, p=0.5, seed=0), ValueError, r"\bn\b"),
    ("random_regular-n", lambda: R.random_regular(-1, degree=0, seed=0), ValueError, r"\bn\b"),
    ("star-n0", lambda: R.star_transformer(0), ValueError, r"\bn\b"),
    ("star-n", lambda: R.star_transformer(-2), ValueError, r"\bn\b"),
    ("longformer-n", lambda: R.longformer(-1, radius=1), ValueError, r"\bn\b"),
    ("etc-n", lambda: R.etc(-1, num_global=1, radius=1), ValueError, r"\bn\b"),
    ("bigbird-n", lambda: R.bigbird(-1, seed=0), ValueError, r"\bn\b"),
    ("bigbird_etc-n", lambda: R.bigbird_etc(-1, seed=0), ValueError, r"\bn\b"),
    ("bpt-n0", lambda: R.bp_transformer(0, k=1), ValueError, r"\bn\b"),
    ("bpt-n", lambda: R.bp_transformer(-3, k=1), ValueError, r"\bn\b"),
    # ---- bool / float / str where an int is expected
    ("full-n-bool", lambda: R.full(True), TypeError, r"\bn\b"),
    ("full-n-float", lambda: R.full(3.0), TypeError, r"\bn\b"),
    ("band-n-float", lambda: R.band(5.0, radius=1), TypeError, r"\bn\b"),
    ("band-n-tensor-float", lambda: R.band(torch.tensor(5.0), radius=1), TypeError, r"\bn\b"),
    ("band-radius-float", lambda: R.band(5, radius=1.0), TypeError, "radius"),
    ("band-radius-bool", lambda: R.band(5, radius=True), TypeError, "radius"),
    ("band-radius-str", lambda: R.band(5, radius="1"), TypeError, "radius"),
    ("band-causal-int", lambda: R.band(5, radius=1, causal=1), TypeError, "causal"),
    ("dilated-dilation-float", lambda: R.dilated(5, radius=1, dilation=2.0), TypeError, "dilation"),
    ("dilated-dilation-bool", lambda: R.dilated(5, radius=1, dilation=True), TypeError, "dilation"),
    ("dilated-causal-none", lambda: R.dilated(5, radius=1, dilation=2, causal=None), TypeError, "causal"),
    ("block_local-block-float", lambda: R.block_local(5, block_size=2.0), TypeError, "block"),
    ("global_nodes-count-float", lambda: R.global_nodes(5, num_global=1.0), TypeError, "num_global"),
    ("global_nodes-count-bool", lambda: R.global_nodes(5, num_global=True), TypeError, "num_global"),
    ("random-kpq-float", lambda: R.random(5, num_random_keys=1.0, seed=0), TypeError, "num_random_keys"),
    ("random-kpq-bool", lambda: R.random(5, num_random_keys=True, seed=0), TypeError, "num_random_keys"),
    ("random_regular-degree-float", lambda: R.random_regular(6, degree=2.0, seed=0), TypeError, "degree"),
    ("erdos_renyi-p-bool", lambda: R.erdos_renyi(5, p=True, seed=0), TypeError, r"\bp\b"),
    ("erdos_renyi-p-str", lambda: R.erdos_renyi(5, p="0.5", seed=0), TypeError, r"\bp\b"),
    ("star-n-float", lambda: R.star_transformer(3.0), TypeError, r"\bn\b"),
    ("star-cyclic-int", lambda: R.star_transformer(3, cyclic=1), TypeError, "cyclic"),
    ("longformer-radius-float", lambda: R.longformer(5, radius=1.0), TypeError, "radius"),
    ("longformer-dilation-bool", lambda: R.longformer(5, radius=1, dilation=True), TypeError, "dilation"),
    ("longformer-dilation-float", lambda: R.longformer(5, radius=1, dilation=2.0), TypeError, "dilation"),
    ("longformer-dilation-item-float", lambda: R.longformer(5, radius=1, dilation=[1, 2.0]), TypeError,
     r"dilation\[1\]"),
    ("etc-radius-float", lambda: R.etc(5, num_global=1, radius=1.5), TypeError, "radius"),
    ("etc-num_global-bool", lambda: R.etc(5, num_global=True, radius=1), TypeError, "num_global"),
    ("etc-max_relative-float", lambda: R.etc(5, num_global=1, radius=1, max_relative=1.0), TypeError,
     "max_relative"),
    ("bigbird-block-float", lambda: R.bigbird(10, block_size=4.0, seed=0), TypeError, "block"),
    ("bigbird-window-float", lambda: R.bigbird(10, block_size=2, num_window_blocks=3.0, seed=0), TypeError, "window_blocks"),
    ("bigbird-random-bool", lambda: R.bigbird(10, block_size=2, num_random_blocks=True, seed=0), TypeError, "random_blocks"),
    ("bigbird-global-float", lambda: R.bigbird(10, block_size=2, num_global_blocks=2.0, seed=0), TypeError, "global_blocks"),
    ("bigbird_etc-num_global-float", lambda: R.bigbird_etc(10, block_size=2, num_global=2.0, seed=0), TypeError,
     "num_global"),
    ("bpt-k-float", lambda: R.bp_transformer(5, k=1.0), TypeError, r"\bk\b"),
    ("bpt-causal-int", lambda: R.bp_transformer(5, k=1, causal=0), TypeError, "causal"),
    # ---- negative radius, dilation 0, other ranges
    ("band-radius", lambda: R.band(5, radius=-1), ValueError, "radius"),
    ("dilated-radius", lambda: R.dilated(5, radius=-1, dilation=2), ValueError, "radius"),
    ("dilated-dilation0", lambda: R.dilated(5, radius=1, dilation=0), ValueError, "dilation"),
    ("dilated-dilation-neg", lambda: R.dilated(5, radius=1, dilation=-2), ValueError, "dilation"),
    ("longformer-radius", lambda: R.longformer(5, radius=-1), ValueError, "radius"),
    ("longformer-dilation0", lambda: R.longformer(5, radius=1, dilation=0), ValueError, "dilation"),
    ("longformer-dilation-item0", lambda: R.longformer(5, radius=1, dilation=[1, 0]), ValueError,
     r"dilation\[1\]"),
    ("longformer-dilation-empty", lambda: R.longformer(5, radius=1, dilation=[]), ValueError, "dilation"),
    ("etc-radius", lambda: R.etc(5, num_global=1, radius=-1), ValueError, "radius"),
    ("etc-max_relative", lambda: R.etc(5, num_global=1, radius=1, max_relative=-1), ValueError, "max_relative"),
    ("etc-num_global", lambda: R.etc(5, num_global=-1, radius=1), ValueError, "num_global"),
    ("global_nodes-count", lambda: R.global_nodes(5, num_global=-1), ValueError, "num_global"),
    ("block_local-block0", lambda: R.block_local(5, block_size=0), ValueError, "block"),
    ("bigbird-block0", lambda: R.bigbird(5, block_size=0, seed=0), ValueError, "block"),
    ("bigbird_etc-block0", lambda: R.bigbird_etc(5, block_size=0, seed=0), ValueError, "block"),
    ("bigbird-window-even", lambda: R.bigbird(20, block_size=2, num_window_blocks=2, seed=0), ValueError, "window_blocks"),
    ("bigbird-window-even4", lambda: R.bigbird(20, block_size=2, num_window_blocks=4, seed=0), ValueError, "window_blocks"),
    ("bigbird-window0", lambda: R.bigbird(20, block_size=2, num_window_blocks=0, seed=0), ValueError, "window_blocks"),
    ("bigbird_etc-window-even", lambda: R.bigbird_etc(20, block_size=2, num_window_blocks=2, seed=0), ValueError,
     "window_blocks"),
    ("bigbird-random-neg", lambda: R.bigbird(20, block_size=2, num_random_blocks=-1, seed=0), ValueError, "random_blocks"),
    ("bigbird-global-neg", lambda: R.bigbird(20, block_size=2, num_global_blocks=-1, seed=0), ValueError, "global_blocks"),
    ("bigbird_etc-num_global-neg", lambda: R.bigbird_etc(20, block_size=2, num_global=-1, seed=0), ValueError,
     "num_global"),
    ("bpt-k0", lambda: R.bp_transformer(5, k=0), ValueError, r"\bk\b"),
    ("bpt-k-neg", lambda: R.bp_transformer(5, k=-1), ValueError, r"\bk\b"),
    # ---- global indices
    ("global_tokens-index-high", lambda: R.global_tokens(5, global_indices=[5]), ValueError, "indices"),
    ("global_tokens-index-neg", lambda: R.global_tokens(5, global_indices=[-1]), ValueError, "indices"),
    ("global_tokens-index-dup", lambda: R.global_tokens(5, global_indices=[1, 3, 1]), ValueError, "indices"),
    ("global_tokens-index-dup-tensor", lambda: R.global_tokens(5, global_indices=torch.tensor([2, 2])), ValueError,
     "indices"),
    ("global_tokens-index-float", lambda: R.global_tokens(5, global_indices=[1.0]), TypeError, "indices"),
    ("global_tokens-index-bool", lambda: R.global_tokens(5, global_indices=[True]), TypeError, "indices"),
    ("global_tokens-index-float-tensor", lambda: R.global_tokens(5, global_indices=torch.tensor([1.0])), TypeError,
     "indices"),
    ("global_tokens-indices-int", lambda: R.global_tokens(5, global_indices=3), TypeError, "indices"),
    ("global_tokens-indices-str", lambda: R.global_tokens(5, global_indices="1"), TypeError, "indices"),
    ("global_tokens-index-empty-n", lambda: R.global_tokens(0, global_indices=[0]), ValueError, "indices"),
    ("longformer-global-high", lambda: R.longformer(5, radius=1, global_indices=[7]), ValueError,
     "global_indices"),
    ("longformer-global-dup", lambda: R.longformer(5, radius=1, global_indices=[2, 2]), ValueError,
     "global_indices"),
    # ---- random rules
    ("random-kpq-too-many", lambda: R.random(5, num_random_keys=5, seed=0), ValueError, "num_random_keys"),
    ("random-kpq-n1", lambda: R.random(1, num_random_keys=1, seed=0), ValueError, "num_random_keys"),
    ("random-kpq-n0", lambda: R.random(0, num_random_keys=1, seed=0), ValueError, "num_random_keys"),
    ("random-kpq-neg", lambda: R.random(5, num_random_keys=-1, seed=0), ValueError, "num_random_keys"),
    ("random_regular-degree-n", lambda: R.random_regular(5, degree=5, seed=0), ValueError, "degree"),
    ("random_regular-degree-big", lambda: R.random_regular(6, degree=9, seed=0), ValueError, "degree"),
    ("random_regular-odd", lambda: R.random_regular(5, degree=3, seed=0), ValueError, "degree"),
    ("random_regular-degree-neg", lambda: R.random_regular(5, degree=-2, seed=0), ValueError, "degree"),
    ("erdos_renyi-p-neg", lambda: R.erdos_renyi(5, p=-0.1, seed=0), ValueError, r"\bp\b"),
    ("erdos_renyi-p-big", lambda: R.erdos_renyi(5, p=1.5, seed=0), ValueError, r"\bp\b"),
    ("erdos_renyi-p-nan", lambda: R.erdos_renyi(5, p=math.nan, seed=0), ValueError, r"\bp\b"),
    ("erdos_renyi-p-inf", lambda: R.erdos_renyi(5, p=math.inf, seed=0), ValueError, r"\bp\b"),
    # ---- ETC segments
    ("etc-segments-count", lambda: R.etc(6, num_global=2, radius=1, segments=[6]), ValueError, "segments"),
    ("etc-segments-count-many", lambda: R.etc(6, num_global=2, radius=1, segments=[2, 2, 2]), ValueError,
     "segments"),
    ("etc-segments-sum", lambda: R.etc(6, num_global=2, radius=1, segments=[3, 2]), ValueError, "segments"),
    ("etc-segments-sum-over", lambda: R.etc(6, num_global=2, radius=1, segments=[3, 4]), ValueError, "segments"),
    ("etc-segments-neg", lambda: R.etc(6, num_global=2, radius=1, segments=[7, -1]), ValueError,
     r"segments\[1\]"),
    ("etc-segments-float", lambda: R.etc(6, num_global=2, radius=1, segments=[3.0, 3]), TypeError,
     r"segments\[0\]"),
    ("etc-segments-int", lambda: R.etc(6, num_global=1, radius=1, segments=6), TypeError, "segments"),
    ("etc-segments-str", lambda: R.etc(6, num_global=1, radius=1, segments="6"), TypeError, "segments"),
    ("etc-segments-global-rows", lambda: R.etc(6, num_global=2, radius=1, segments=[1], queries=range(0, 6)),
     ValueError, "segments"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- queries
RULES = {
    "full": lambda q: R.full(6, queries=q),
    "band": lambda q: R.band(6, radius=1, queries=q),
    "dilated": lambda q: R.dilated(6, radius=1, dilation=2, queries=q),
    "block_local": lambda q: R.block_local(6, block_size=4, queries=q),
    "global_tokens": lambda q: R.global_tokens(6, global_indices=[0], queries=q),
    "global_nodes": lambda q: R.global_nodes(6, num_global=2, queries=q),
    "random": lambda q: R.random(6, num_random_keys=2, seed=0, queries=q),
    "erdos_renyi": lambda q: R.erdos_renyi(6, p=0.5, seed=0, queries=q),
    "random_regular": lambda q: R.random_regular(6, degree=3, seed=0, queries=q),
    "star_transformer": lambda q: R.star_transformer(6, queries=q),
    "longformer": lambda q: R.longformer(6, radius=1, global_indices=[0], queries=q),
    "longformer_heads": lambda q: R.longformer(6, radius=1, dilation=[1, 2], queries=q),
    "etc": lambda q: R.etc(6, num_global=2, radius=1, queries=q),
    "bigbird": lambda q: R.bigbird(6, block_size=2, seed=0, queries=q),
    "bigbird_etc": lambda q: R.bigbird_etc(6, block_size=2, num_global=2, seed=0, queries=q),
    "bp_transformer": lambda q: R.bp_transformer(6, k=1, queries=q),
}


def _bad_queries(num_nodes: int):
    return [
        ("step2", range(0, 4, 2), ValueError),
        ("step-1", range(3, 0, -1), ValueError),
        ("past-end", range(0, num_nodes + 1), ValueError),
        ("start-past-end", range(num_nodes + 1, num_nodes + 2), ValueError),
        ("negative", range(-1, 2), ValueError),
        ("reversed", range(4, 2), ValueError),
        ("list", [0, 1], TypeError),
        ("tuple", (0, 2), TypeError),
        ("slice", slice(0, 2), TypeError),
        ("int", 3, TypeError),
    ]


QUERY_CASES = []
for _name, _make in RULES.items():
    _N = _make(None).num_nodes
    QUERY_CASES += [pytest.param(_name, q, exc, id=f"{_name}-{label}") for label, q, exc in _bad_queries(_N)]


@pytest.mark.parametrize("name,queries,exc", QUERY_CASES)
def test_bad_queries(name, queries, exc):
    with pytest.raises(exc, match="queries"):
        RULES[name](queries)


# ----------------------------------------------------------------------------- seeds
SEEDED = {
    "random": lambda s: R.random(6, num_random_keys=2, seed=s),
    "erdos_renyi": lambda s: R.erdos_renyi(6, p=0.5, seed=s),
    "random_regular": lambda s: R.random_regular(6, degree=3, seed=s),
    "bigbird": lambda s: R.bigbird(30, block_size=2, seed=s),
    "bigbird_etc": lambda s: R.bigbird_etc(30, block_size=2, seed=s),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
@pytest.mark.parametrize("seed", ["3", 1.5, True, [1]], ids=["str", "float", "bool", "list"])
def test_bad_seed(name, seed):
    with pytest.raises(TypeError, match="seed"):
        SEEDED[name](seed)
