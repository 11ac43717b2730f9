import pytest
import torch

from graphattn import rules

pytest.importorskip("transformers", minversion="5.24")
from graphattn import hf  # noqa: E402
from graphattn.hf.graphs import LayerGraphs  # noqa: E402
from tests.hf.hf_helpers import padded_batch, tiny_bert  # noqa: E402


class CountingRule:
    def __init__(self):
        self.calls = []

    def __call__(self, n):
        self.calls.append(n)
        return rules.band(n, radius=1)


def test_a_rule_is_built_once_per_length_for_all_layers():
    rule = CountingRule()
    model = hf.sparsify(tiny_bert(), rule)
    ids, am = padded_batch([7, 5, 7])
    with torch.no_grad():
        for _ in range(2):
            model(ids, attention_mask=am)
            model(ids[:1])
    assert sorted(rule.calls) == [5, 7]  # two layers share the rule: built once per length
    holders = {id(getattr(layer.attention.self, "_graphattn_graphs")) for layer in model.encoder.layer}
    assert len(holders) == 1


def test_batched_graphs_are_the_disjoint_union_of_each_length():
    graphs = LayerGraphs(lambda n: rules.band(n, radius=1), layers=[0], causal=False)
    g = graphs.batched(torch.tensor([3, 2]), "cpu")
    assert g.num_nodes == 5 and g.to_dense()[:3, :3].equal(rules.band(3, radius=1).to_dense())
    assert g.to_dense()[3:, 3:].all() and not g.to_dense()[:3, 3:].any()
    assert graphs.batched(torch.tensor([3, 2]), "cpu") is g  # cached per tuple of lengths


def test_checks_run_when_a_graph_is_built():
    with pytest.raises(ValueError, match="layer 3: expected a graph over the sequence's 4 tokens, got a graph over 5"):
        LayerGraphs(lambda n: rules.band(n + 1, radius=1), layers=[3], causal=False).graph(4, "cpu")
    with pytest.raises(ValueError, match="layers 1, 2: the model is causal but its graph is not"):
        LayerGraphs(lambda n: rules.band(n, radius=1), layers=[1, 2], causal=True).graph(4, "cpu")
    causal = LayerGraphs(lambda n: rules.band(n, radius=1, causal=True), layers=[1], causal=True)
    assert causal.graph(4, "cpu").num_nodes == 4
