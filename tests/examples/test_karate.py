"""The KarateClub example trains well above the majority-class baseline, deterministically."""

import pytest
import torch

from graphattn.examples import karate


def test_karate_trains():
    state = torch.random.get_rng_state()
    runs = [karate.train(seed=s) for s in range(3)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    y = karate.load().y[:34]
    majority = float(torch.bincount(y).max() - 1) / 30  # most common class among the 30 test members
    assert majority == pytest.approx(0.4)
    accs = [r["test_acc"] for r in runs]
    assert min(accs) > majority and sum(accs) / 3 >= 0.6, runs
    assert runs[0]["train_acc"] == 1.0
    again = karate.train(seed=0)
    assert again["test_acc"] == runs[0]["test_acc"] and again["loss"] == runs[0]["loss"]


def test_karate_data_pipeline():
    data = karate.load(expander_degree=4, virtual_nodes=1, seed=0)
    assert data.num_nodes == 35 and int(data.virtual_node_mask.sum()) == 1
    assert data.x.shape == (35, 34) and int(data.train_mask.sum()) == 4
    key, query = data.attn_edge_index
    assert int((query == 34).sum()) == 35  # the virtual node attends everyone
    assert torch.equal(data.edge_index, karate.load(expander_degree=0, virtual_nodes=0).edge_index)
