from collections import OrderedDict

import pytest
import torch

from graphattn import rules
from graphattn.models._ragged import (LengthCache, batched_graph, check_mask, lru_get, pad_rows, ragged_mask,
                                      ragged_tokens)


def test_layout_of_a_mask_with_padding_anywhere():
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    r = ragged_mask(keep)
    assert r.lengths.tolist() == [3, 1, 4]
    assert r.ptr.tolist() == [0, 3, 4, 8]
    assert r.sample.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert r.position.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert r.positions().tolist() == [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]]
    flat = torch.arange(8.0)[:, None].expand(8, 2)
    back = r.scatter(flat)
    assert back.shape == (3, 4, 2)
    assert back[..., 0].tolist() == [[0, 0, 1, 2], [0, 0, 3, 0], [4, 5, 6, 7]]
    assert torch.equal(back[keep], flat)


def test_tokens_with_a_mask_or_a_padding_id():
    tokens = torch.tensor([[5, 0, 6], [7, 8, 0]])
    by_id = ragged_tokens(tokens, 0)
    assert by_id.ids.tolist() == [5, 6, 7, 8]
    by_mask = ragged_tokens(tokens, 0, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert by_mask.ids.tolist() == [5, 0, 7, 8, 0] and by_mask.lengths.tolist() == [2, 3]
    with pytest.raises(ValueError, match="sample 1 is all padding_idx = 0"):
        ragged_tokens(torch.tensor([[1, 2], [0, 0]]), 0)
    with pytest.raises(ValueError, match="expected every sample of attention_mask to keep at least one position, sample 0 keeps none"):
        ragged_tokens(torch.tensor([[1, 2]]), 0, torch.tensor([[0, 0]]))


def test_check_mask():
    assert check_mask(torch.tensor([[1, 0]]), (1, 2)).dtype == torch.bool
    with pytest.raises(ValueError, match=r"expected attention_mask of shape \[1, 3\], got \[1, 2\]"):
        check_mask(torch.tensor([[1, 0]]), (1, 3))
    with pytest.raises(ValueError, match=r"expected attention_mask values in \{0, 1\}, got \[2\]"):
        check_mask(torch.tensor([[1, 2]]), (1, 2))
    with pytest.raises(TypeError, match="expected src_mask to be a bool or integer 0/1 tensor, got dtype torch.float32"):
        check_mask(torch.ones(1, 2), (1, 2), "src_mask")
    with pytest.raises(TypeError, match="expected attention_mask to be a torch.Tensor"):
        check_mask([[1, 0]], (1, 2))


def test_pad_rows():
    values = torch.arange(5)
    out, keep = pad_rows(values, torch.tensor([0, 2, 2, 5]), fill=-1)
    assert out.tolist() == [[0, 1, -1], [-1, -1, -1], [2, 3, 4]]
    assert keep.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def test_length_cache_and_batched_graph_build_once():
    calls = []

    def make(n):
        calls.append(n)
        return rules.band(n, radius=1)

    per_length = LengthCache(make, size=2)
    cache = OrderedDict()
    g1, ptr = batched_graph(per_length, torch.tensor([3, 5, 3]), "cpu", cache)
    g2, _ = batched_graph(per_length, torch.tensor([3, 5, 3]), "cpu", cache)
    assert g1 is g2 and calls == [3, 5]
    assert ptr.tolist() == [0, 3, 8, 11] and g1.num_nodes == 11
    ref = torch.cat([rules.band(3, radius=1).edge_index, rules.band(5, radius=1).edge_index + 3,
                     rules.band(3, radius=1).edge_index + 8], dim=1)
    assert torch.equal(g1.edge_index, ref)
    per_length(7)
    per_length(3)  # 5 was the least recently used length: dropped
    per_length(5)
    assert calls == [3, 5, 7, 5]


def test_lru_get_drops_the_least_recently_used():
    store, made = OrderedDict(), []
    for key in (1, 2, 1, 3, 2):
        lru_get(store, key, lambda: made.append(key) or key, 2)
    assert made == [1, 2, 3, 2] and list(store) == [3, 2]
