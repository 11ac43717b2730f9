from functools import partial

import pytest
import torch

from graphattn import rules

transformers = pytest.importorskip("transformers", minversion="5.24")
from transformers.masking_utils import (  # noqa: E402
    bidirectional_mask_function, causal_mask_function, sliding_window_causal_mask_function)

from graphattn import hf  # noqa: E402
from graphattn.hf.attention import graph_attention_forward, padding_mask  # noqa: E402
from tests.hf.hf_helpers import padded_batch, tiny_bert  # noqa: E402


def test_padding_mask_is_the_2d_mask_or_none():
    am = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = padding_mask(2, 3, 3, mask_function=bidirectional_mask_function, attention_mask=am)
    assert out.dtype == torch.bool and out.tolist() == [[True, True, True], [True, True, False]]
    assert padding_mask(2, 3, 3, mask_function=causal_mask_function, attention_mask=torch.ones(2, 3)) is None
    assert padding_mask(2, 3, 3, mask_function=causal_mask_function, attention_mask=None) is None
    # decoding with a dynamic cache: 2 new queries, the last of 5 keys
    dec = padding_mask(1, 2, 5, q_offset=3, mask_function=causal_mask_function,
                       attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))
    assert dec.tolist() == [[False, True, True, True, True]]


def test_padding_mask_refuses_what_a_graph_cannot_express():
    with pytest.raises(ValueError, match="mask pattern of its own"):
        padding_mask(1, 4, 4, mask_function=sliding_window_causal_mask_function(2), attention_mask=None)
    with pytest.raises(ValueError, match=r"queries \[2, 3\) and keys \[0, 8\) \(a static cache\?\)"):
        padding_mask(1, 1, 8, q_offset=2, mask_function=causal_mask_function, attention_mask=None)


def test_a_custom_4d_mask_is_refused():
    model = hf.sparsify(tiny_bert(), partial(rules.band, radius=1))
    ids, _ = padded_batch([5])
    with pytest.raises(ValueError, match="custom 4D masks are not supported"):
        model(ids, attention_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_an_all_padding_sample_leaves_the_others_alone():
    model = hf.sparsify(tiny_bert(), partial(rules.band, radius=1))
    ids, am = padded_batch([6, 0])
    with torch.no_grad():
        out = model(ids, attention_mask=am).last_hidden_state
        alone = model(ids[:1]).last_hidden_state
    torch.testing.assert_close(out[0], alone[0], rtol=1e-5, atol=1e-5)


def test_options_a_graph_cannot_honour_are_refused():
    model = hf.sparsify(tiny_bert(), rules.full)
    layer = model.encoder.layer[0].attention.self
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match="does not support the 'softcap' option"):
        graph_attention_forward(layer, q, q, q, None, softcap=30.0)


def test_attention_dropout_reaches_graph_attention():
    model = hf.sparsify(tiny_bert(attention_probs_dropout_prob=0.5), rules.full)
    ids, _ = padded_batch([7])
    with torch.no_grad():
        model.eval()
        a, b = model(ids).last_hidden_state, model(ids).last_hidden_state
        model.train()
        c = model(ids).last_hidden_state
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
