"""The long-range example: attention edges (expander + virtual node) solve what local message
passing of the same depth cannot reach."""

import torch

from graphattn.examples import long_range


def test_make_graphs():
    gs = long_range.make_graphs(5, num_nodes=10, num_colours=3, seed=1)
    for g in gs:
        s = int(g.x[:, 0].argmax())
        assert int(g.x[:, 0].sum()) == 1 and int(g.x[s, 1:].argmax()) == int(g.y[0])
        assert bool((g.y == g.y[0]).all())
        assert torch.equal(g.source_distance, (torch.arange(10) - s).abs())
    assert all(torch.equal(a.x, b.x) for a, b in zip(gs, long_range.make_graphs(5, num_nodes=10,
                                                                                 num_colours=3, seed=1)))


def test_attention_edges_reach_where_local_message_passing_cannot():
    res = long_range.compare(seed=0)
    local, exph = res["local"], res["exphormer"]
    assert exph["far_acc"] >= 0.95, res
    # Out of reach: no better than the best constant guess (a small margin for a finite test set).
    assert local["far_acc"] <= local["far_majority"] + 0.05, res
    assert local["far_majority"] < 0.45, res
    assert local["near_acc"] >= 0.9, res  # the control does learn what it can reach
    assert exph["attention_edges_per_node"] < 10  # sparse: about local + expander + virtual node
