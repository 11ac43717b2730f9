"""The 0.1 renames: every former keyword still works, warns once, and never hides a conflict."""

import inspect
import warnings

import pytest
import torch

from graphattn import _validate, rules
from graphattn.compose import lift_blocks
from graphattn.models import bigbird_encoder, routing_encoder
from graphattn.nn import GraphAttention, RoutingAttention, graph_attention

OLD_CALLS = [
    (lambda: rules.random(9, keys_per_query=2, seed=0), lambda: rules.random(9, num_random_keys=2, seed=0)),
    (lambda: rules.global_tokens(9, indices=[0]), lambda: rules.global_tokens(9, global_indices=[0])),
    (lambda: rules.global_nodes(9, count=2), lambda: rules.global_nodes(9, num_global=2)),
    (lambda: rules.block_local(9, block=4), lambda: rules.block_local(9, block_size=4)),
    (lambda: rules.bigbird(90, block=4, window_blocks=5, random_blocks=1, global_blocks=1, seed=0),
     lambda: rules.bigbird(90, block_size=4, num_window_blocks=5, num_random_blocks=1, num_global_blocks=1, seed=0)),
    (lambda: rules.bigbird_etc(90, block=4, random_blocks=1, seed=0),
     lambda: rules.bigbird_etc(90, block_size=4, num_random_blocks=1, seed=0)),
    (lambda: lift_blocks(rules.band(3, radius=0), block=2, num_tokens=5),
     lambda: lift_blocks(rules.band(3, radius=0), block_size=2, num_tokens=5)),
    (lambda: rules.kmeans(torch.eye(6), num_clusters=2, window=2, seed=0),
     lambda: rules.kmeans(torch.eye(6), num_clusters=2, cluster_size=2, seed=0)),
]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_validate, "_WARNED_RENAMES", set())


@pytest.mark.parametrize("old,new", OLD_CALLS)
def test_old_names_build_the_same_graph_with_one_warning(old, new):
    with pytest.warns(FutureWarning, match="is now called"):
        g_old = old()
    assert g_old.equals(new())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old()  # once per function and name


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(TypeError, match="'keys_per_query' and its new name 'num_random_keys'"):
        rules.random(9, keys_per_query=2, num_random_keys=2, seed=0)


def test_signatures_show_only_the_new_names():
    params = inspect.signature(rules.bigbird).parameters
    assert "block_size" in params and "block" not in params


def test_attention_weights_keyword():
    q = torch.randn(5, 1, 4)
    g = rules.band(5, radius=1)
    with pytest.warns(FutureWarning, match="return_weights"):
        _, w_old = graph_attention(q, q, q, g, return_weights=True)
    _, w_new = graph_attention(q, q, q, g, return_attention_weights=True)
    assert torch.equal(w_old, w_new)
    layer = GraphAttention(8, 2)
    x = torch.randn(5, 8)
    with pytest.warns(FutureWarning, match="return_attention"):
        out, w = layer(x, g, return_attention=True)
    assert w.shape == (g.num_edges, 2)


def test_model_builders_accept_old_names():
    with pytest.warns(FutureWarning, match="block"):
        enc = bigbird_encoder(8, 2, 1, block=4, seed=0)
    assert enc(torch.randn(40, 8)).shape == (40, 8)
    with pytest.warns(FutureWarning, match="window"):
        routing_encoder(8, 2, 1, num_clusters=2, radius=1, window=3, seed=0)
    with pytest.warns(FutureWarning, match="window"):
        layer = RoutingAttention(8, 2, num_clusters=2, window=3)
    assert layer.cluster_size == 3
