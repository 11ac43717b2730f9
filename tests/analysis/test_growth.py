"""graphattn.analysis.scaling: growth exponents and labels of the rules."""

import pytest
import torch

from graphattn import rules
from graphattn.analysis import scaling

NS = [256, 512, 1024, 2048, 4096, 8192]


@pytest.mark.parametrize("name,rule", [
    ("band", lambda n: rules.band(n, radius=4)),
    ("dilated", lambda n: rules.dilated(n, radius=2, dilation=3)),
    ("random", lambda n: rules.random(n, num_random_keys=3, seed=0)),
    ("star", lambda n: rules.star_transformer(n)),
    ("longformer", lambda n: rules.longformer(n, radius=4, global_indices=[0])),
    ("etc", lambda n: rules.etc(n, num_global=2, radius=3)),
    ("bigbird", lambda n: rules.bigbird(n, block_size=16, seed=0)),
])
def test_linear_rules(name, rule):
    s = scaling(rule, NS)
    assert s["label"] == "O(n)", s
    assert s["exponent"] == pytest.approx(1.0, abs=0.05)


def test_band_exact_counts():
    s = scaling(lambda n: rules.band(n, radius=2), [10, 100, 1000])
    assert s["edges"] == [5 * n - 6 for n in (10, 100, 1000)]
    assert s["keys_per_query"] == pytest.approx([(5 * n - 6) / n for n in (10, 100, 1000)])
    assert s["edges_per_token"] == s["keys_per_query"]


def test_full_is_quadratic():
    s = scaling(rules.full, [32, 64, 128, 256, 512])
    assert s["label"] == "O(n^2)" and s["exponent"] == pytest.approx(2.0, abs=1e-9)
    assert s["edges"] == [n * n for n in s["ns"]]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_bp_transformer_is_n_log_n(k):
    s = scaling(lambda n: rules.bp_transformer(n, k=k), NS + [16384])
    assert s["label"] == "O(n log n)", s
    assert 1.05 < s["exponent"] < 1.5


def test_sorted_unique_ns_and_errors():
    s = scaling(lambda n: rules.band(n, radius=1), [64, 16, 64, 32])
    assert s["ns"] == [16, 32, 64]
    assert scaling(lambda n: rules.band(n, radius=1), torch.tensor([16, 32]))["ns"] == [16, 32]
    assert scaling(lambda n: rules.band(n, radius=1), range(16, 49, 16))["ns"] == [16, 32, 48]
    with pytest.raises(TypeError, match="callable"):
        scaling(5, [2, 4])
    with pytest.raises(TypeError, match="sequence of ints"):
        scaling(rules.full, 16)
    with pytest.raises(ValueError, match="two distinct"):
        scaling(rules.full, [16, 16])
    with pytest.raises(ValueError, match=r"ns\[0\] >= 2"):
        scaling(rules.full, [1, 16])
    with pytest.raises(TypeError, match=r"rule\(16\) to be an AttentionGraph"):
        scaling(lambda n: torch.ones(n), [16, 32])
    with pytest.raises(ValueError, match="edges at every n"):
        scaling(lambda n: rules.band(n, radius=0).without_self_loops(), [16, 32])
