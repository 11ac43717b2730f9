import pytest
import torch
from tests.models.model_helpers import band_mask, dependency

from graphattn import rules
from graphattn.bench.decode import count_plan_builds
from graphattn.models import (CausalRule, EncoderDecoder, GraphRule, beam_search, cross_edge_index,
                              ragged_cross_edge_index, row_attention)


def _model(**kw):
    return EncoderDecoder(20, 8, 2, 2, GraphRule(rules.band, radius=1), **kw).double()


def test_encode_decode_compose_to_forward():
    torch.manual_seed(0)
    model = _model()
    src, tgt = torch.randint(0, 20, (3, 11)), torch.randint(0, 20, (3, 6))
    out = model(src, tgt)
    assert out.shape == (3, 6, 20)
    memory = model.encode(src)
    torch.testing.assert_close(model.decode(model.decoder_embedding(tgt), memory), out)
    # unbatched decode of one sample
    torch.testing.assert_close(model.decode(model.decoder_embedding(tgt[1]), memory[1]), out[1])
    assert model.output.weight is model.decoder_embedding.weight


def test_decoder_is_causal_by_gradients_and_by_edits():
    torch.manual_seed(1)
    model = _model()
    src, tgt = torch.randint(0, 20, (1, 9)), torch.randint(0, 20, (1, 7))
    memory = model.encode(src)[0].detach()
    emb = model.decoder_embedding(tgt)[0].detach()
    dep = dependency(lambda e: model.decode(e, memory), emb)
    assert torch.equal(dep, band_mask(7, -7, 0))  # logits t depend on exactly tgt 0..t
    edited = tgt.clone()
    edited[0, 4:] = (edited[0, 4:] + 1) % 20
    torch.testing.assert_close(model(src, edited)[0, :4], model(src, tgt)[0, :4], rtol=0, atol=0)


def test_cross_attention_is_full_and_encoder_is_sparse():
    torch.manual_seed(2)
    model = _model()
    src, tgt = torch.randint(0, 20, (1, 10)), torch.randint(0, 20, (1, 4))
    x = model.encoder_embedding(src)[0].detach() + model.encoder_positions.weight[:10].detach()
    # encoder: two band layers of radius 1
    assert torch.equal(dependency(model.encoder, x), band_mask(10, -2, 2))
    emb = model.decoder_embedding(tgt)[0].detach()
    dep = dependency(lambda m: model.decode(emb, model.encoder(m)), x)
    assert bool(dep.all())  # every target step sees every source token


def test_decoder_layer_matches_dense_sdpa_reference():
    torch.manual_seed(3)
    model = _model()
    layer = model.decoder[0]
    T, n, E, H = 5, 7, 8, 2
    x, mem = torch.randn(2, T, E, dtype=torch.float64), torch.randn(2, n, E, dtype=torch.float64)
    out = layer(x, mem, rules.full(T).causal(), cross_edge_index(n, T))

    def mha(attn, q_in, kv_in, mask):
        B, Tq, Tk = q_in.shape[0], q_in.shape[1], kv_in.shape[1]
        q = attn.q_proj(q_in).view(B, Tq, H, E // H).transpose(1, 2)
        k = attn.k_proj(kv_in).view(B, Tk, H, E // H).transpose(1, 2)
        v = attn.v_proj(kv_in).view(B, Tk, H, E // H).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.out_proj(o.transpose(1, 2).reshape(B, Tq, E))

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    y = x + mha(layer.self_attn, layer.norm1(x), layer.norm1(x), causal)
    y = y + mha(layer.cross_attn, layer.norm2(y), mem, None)
    y = y + layer.ff(layer.norm3(y))
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-12)


def test_cross_edge_index_is_the_complete_bipartite_graph():
    ei = cross_edge_index(3, 2)
    assert ei.tolist() == [[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]]
    assert cross_edge_index(0, 4).shape == (2, 0)


def test_sparse_etc_encoder_with_global_nodes_and_relative_bias():
    torch.manual_seed(4)
    model = EncoderDecoder(20, 8, 2, 1, GraphRule(rules.etc, num_global=2, radius=1), num_global=2,
                           num_relative=4, decoder_layers=2)
    assert len(model.decoder) == 2
    out = model(torch.randint(0, 20, (2, 12)), torch.randint(0, 20, (2, 3)))
    assert out.shape == (2, 3, 20) and bool(out.isfinite().all())


@pytest.mark.slow  # a training run: minutes on 2 cores
def test_learns_to_copy_the_reversed_source():
    """Teacher-forced reversal of 6 tokens: needs the full cross-attention."""
    torch.manual_seed(5)
    model = EncoderDecoder(12, 32, 4, 1, GraphRule(rules.band, radius=1), max_len=16)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        src = torch.randint(2, 12, (32, 6), generator=gen)
        tgt = torch.cat([torch.ones(32, 1, dtype=torch.long), src.flip(1)], dim=1)  # 1 = start token
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), tgt[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    src = torch.randint(2, 12, (256, 6), generator=torch.Generator().manual_seed(1))
    tgt = torch.cat([torch.ones(256, 1, dtype=torch.long), src.flip(1)], dim=1)
    with torch.no_grad():
        acc = (model(src, tgt[:, :-1]).argmax(-1) == tgt[:, 1:]).float().mean()
    assert float(acc) >= 0.9, float(acc)


def test_errors():
    model = _model(max_len=8)
    with pytest.raises(ValueError, match="expected sequences of at most max_len = 8 tokens, got 9"):
        model(torch.randint(0, 20, (1, 9)), torch.randint(0, 20, (1, 3)))
    with pytest.raises(ValueError, match=r"expected src of shape \[B, n\]"):
        model(torch.randint(0, 20, (9,)), torch.randint(0, 20, (1, 3)))
    with pytest.raises(ValueError, match=r"expected tgt ids in \[0, vocab_size = 20\), got 20"):
        model(torch.randint(0, 20, (1, 4)), torch.tensor([[20]]))
    with pytest.raises(ValueError, match="expected tgt_embeddings and memory with one batch layout"):
        model.decode(torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(3, 4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected memory with last dim embed_dim = 8, got 5"):
        model.decode(torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64))


def _masked_batch(B, n, T, gen, vocab=20):
    src, tgt = torch.randint(3, vocab, (B, n), generator=gen), torch.randint(3, vocab, (B, T), generator=gen)
    src_len = torch.randint(1, n + 1, (B,), generator=gen)
    tgt_len = torch.randint(1, T + 1, (B,), generator=gen)
    src_len[0], tgt_len[0] = n, T
    src_mask = torch.arange(n)[None] < src_len[:, None]
    tgt_mask = torch.arange(T)[None] < tgt_len[:, None]
    return src, tgt, src_mask, tgt_mask


@pytest.mark.parametrize("encoder", ["bigbird", "etc"])
def test_padded_batch_equals_each_sample_alone(encoder):
    torch.manual_seed(6)
    if encoder == "bigbird":
        model = EncoderDecoder(20, 8, 2, 2, GraphRule(rules.bigbird, block_size=3, seed=0)).double()
    else:
        model = EncoderDecoder(20, 8, 2, 1, GraphRule(rules.etc, num_global=2, radius=1), num_global=2,
                               num_relative=4).double()
        torch.nn.init.normal_(model.encoder.layers[0].attn.relative_bias.weight)
    src, tgt, src_mask, tgt_mask = _masked_batch(4, 23, 9, torch.Generator().manual_seed(0))
    src_mask[2] = src_mask[2].flip(0)  # left-padded source
    out = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    for b in range(4):
        alone = model(src[b][src_mask[b]][None], tgt[b][tgt_mask[b]][None])[0]
        torch.testing.assert_close(out[b][tgt_mask[b]], alone, rtol=1e-9, atol=1e-9)
    assert bool((out[~tgt_mask] == 0).all())
    # the graphs of a padded batch are built once per tuple of lengths
    key = ("ragged", tuple(src_mask.sum(1).tolist()), tuple(tgt_mask.sum(1).tolist()), "cpu")
    cross = model._cross[key]
    model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    assert model._cross[key] is cross


def test_ragged_cross_edges_are_the_union_of_the_bipartite_graphs():
    nk, nq = torch.tensor([3, 1, 2]), torch.tensor([2, 2, 1])
    ei = ragged_cross_edge_index(nk, nq)
    parts, ko, qo = [], 0, 0
    for a, b in zip(nk.tolist(), nq.tolist()):
        parts.append(cross_edge_index(a, b) + torch.tensor([[ko], [qo]]))
        ko, qo = ko + a, qo + b
    assert torch.equal(ei, torch.cat(parts, dim=1))


@pytest.mark.parametrize("decoder_graph", [None, CausalRule(rules.band, radius=2, causal=True),
                                           CausalRule(rules.bigbird, context=32, block_size=2, seed=4)])
def test_incremental_decoding_equals_the_full_forward_at_every_step(decoder_graph):
    torch.manual_seed(7)
    model = EncoderDecoder(20, 8, 2, 2, GraphRule(rules.band, radius=2), decoder_graph=decoder_graph).double().eval()
    src, tgt, src_mask, _ = _masked_batch(3, 15, 11, torch.Generator().manual_seed(1))
    full = model(src, tgt, src_mask=src_mask)
    memory = model.encode(src, src_mask)
    cache = model.start_decoding(memory, src_mask, capacity=11)
    for t in range(11):
        torch.testing.assert_close(model.decode_step(tgt[:, t], cache), full[:, t], rtol=1e-9, atol=1e-9)
    assert cache.lengths.tolist() == [11, 11, 11]
    with pytest.raises(ValueError, match="expected a free position in the cache"):
        model.decode_step(tgt[:, 0], cache)


def test_cached_cross_attention_equals_the_engine_call():
    torch.manual_seed(8)
    model = _model()
    layer = model.decoder[0]
    memory = torch.randn(2, 6, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    k, v = layer.cross_keys(memory)
    h = torch.randn(2, 8, dtype=torch.float64)
    q = layer.cross_attn.q_proj(h).view(2, 1, 2, 4)
    cached = layer.cross_attn.out_proj(row_attention(q, k, v, mask[:, None]).reshape(2, 8))
    for b, n in enumerate((4, 6)):
        ref = layer.cross_attn(h[b:b + 1], cross_edge_index(n, 1), x_kv=memory[b, :n])
        torch.testing.assert_close(cached[b:b + 1], ref, rtol=1e-12, atol=1e-12)


def test_generate_greedy_equals_argmax_of_the_full_forward_and_one_beam():
    torch.manual_seed(9)
    model = EncoderDecoder(20, 16, 2, 1, GraphRule(rules.band, radius=2)).double()
    model.train()
    src, _, src_mask, _ = _masked_batch(4, 12, 2, torch.Generator().manual_seed(2))
    out = model.generate(src, src_mask, max_new_tokens=8, bos_id=1)
    assert model.training  # put back as it was
    assert out.shape == (4, 8)
    model.eval()
    tgt = torch.cat([torch.ones(4, 1, dtype=torch.long), out], dim=1)
    logits = model(src, tgt[:, :-1], src_mask=src_mask)
    assert torch.equal(logits.argmax(-1), out)
    assert torch.equal(model.generate(src, src_mask, max_new_tokens=8, bos_id=1, num_beams=1), out)
    # stop at eos: make sample 0's third token the eos
    eos = int(out[0, 2])
    stopped = model.generate(src, src_mask, max_new_tokens=8, bos_id=1, eos_id=eos, pad_id=0)
    for b in range(4):
        row = out[b].tolist()
        cut = row.index(eos) + 1 if eos in row else 8
        assert stopped[b, :cut].tolist() == row[:cut] and bool((stopped[b, cut:] == 0).all())


def test_beam_search_with_the_cache_equals_beam_search_on_full_forwards():
    torch.manual_seed(10)
    model = EncoderDecoder(12, 16, 2, 1, GraphRule(rules.band, radius=2), tie_embeddings=False).double().eval()
    torch.nn.init.normal_(model.output.weight, std=0.7)  # peaked, varied outputs: beams that diverge and end
    torch.nn.init.normal_(model.decoder_embedding.weight, std=1.0)
    src, _, src_mask, _ = _masked_batch(3, 10, 2, torch.Generator().manual_seed(3), vocab=12)
    out = model.generate(src, src_mask, max_new_tokens=6, bos_id=1, eos_id=2, num_beams=3, length_penalty=1.0)

    class FullForward:  # no cache: every step reruns the whole decoder on the prefixes
        def __init__(self):
            self.src = src.repeat_interleave(3, 0)
            self.mask = src_mask.repeat_interleave(3, 0)
            self.tgt = torch.ones(9, 1, dtype=torch.long)

        def logits(self):
            return model(self.src, self.tgt, src_mask=self.mask)[:, -1]

        def step(self, tokens):
            self.tgt = torch.cat([self.tgt, tokens[:, None]], dim=1)
            return self.logits()

        def reorder(self, index):
            self.tgt = self.tgt[index]

    ref_model = FullForward()
    ref = beam_search(ref_model.step, ref_model.reorder, ref_model.logits(), num_beams=3, max_new_tokens=6,
                      eos_id=2, length_penalty=1.0)
    assert torch.equal(out, ref)
    assert not torch.equal(out, model.generate(src, src_mask, max_new_tokens=6, bos_id=1, eos_id=2))


def test_decoding_errors():
    model = _model(max_len=8)
    with pytest.raises(TypeError, match="expected decoder_graph to be a CausalRule or None"):
        EncoderDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=1), decoder_graph=GraphRule(rules.full))
    with pytest.raises(ValueError, match=r"expected memory of shape \[B, n, 8\]"):
        model.start_decoding(torch.randn(3, 8, dtype=torch.float64), capacity=2)
    with pytest.raises(ValueError, match="expected sequences of at most max_len = 8 tokens, got 9"):
        model.generate(torch.randint(0, 20, (1, 4)), max_new_tokens=9, bos_id=1)
    with pytest.raises(ValueError, match=r"expected bos_id <= 19, got 20"):
        model.generate(torch.randint(0, 20, (1, 4)), max_new_tokens=2, bos_id=20)
    with pytest.raises(ValueError, match=r"expected src_mask of shape \[1, 4\], got \[1, 3\]"):
        model(torch.randint(0, 20, (1, 4)), torch.randint(0, 20, (1, 2)), src_mask=torch.ones(1, 3, dtype=torch.bool))


def test_plans_are_built_once_per_graph_not_per_layer_or_step():
    torch.manual_seed(11)
    model = EncoderDecoder(20, 8, 2, 3, GraphRule(rules.band, radius=2)).eval()
    src, tgt, src_mask, tgt_mask = _masked_batch(3, 14, 6, torch.Generator().manual_seed(4))
    with count_plan_builds() as count:
        model.generate(src, src_mask, max_new_tokens=12, bos_id=1, num_beams=2)
    assert count[0] == 1  # the encoder's union graph, shared by its 3 layers; decoding steps build none
    with count_plan_builds() as count:
        model.generate(src, src_mask, max_new_tokens=12, bos_id=1)
    assert count[0] == 0
    with count_plan_builds() as count:
        model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    assert count[0] == 2  # the decoder's union of causal graphs and its cross edges (3 layers each)
    with count_plan_builds() as count:
        model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    assert count[0] == 0
    bigbird = EncoderDecoder(20, 8, 2, 3, GraphRule(rules.bigbird, block_size=2, seed=0))
    with count_plan_builds() as count:
        bigbird.generate(src, src_mask, max_new_tokens=5, bos_id=1)
    assert count[0] == 1  # the three layers share one rule here: one graph


def test_sinusoidal_positions_padded_batches_and_decoding():
    torch.manual_seed(12)
    model = EncoderDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=1), positions="sinusoidal").double().eval()
    assert not any("positions" in n for n, _ in model.named_parameters())
    src, tgt, src_mask, tgt_mask = _masked_batch(3, 12, 7, torch.Generator().manual_seed(5))
    out = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask)
    for b in range(3):
        alone = model(src[b][src_mask[b]][None], tgt[b][tgt_mask[b]][None])[0]
        torch.testing.assert_close(out[b][tgt_mask[b]], alone, rtol=1e-9, atol=1e-9)
    full = model(src, tgt, src_mask=src_mask)
    cache = model.start_decoding(model.encode(src, src_mask), src_mask, capacity=7)
    for t in range(7):
        torch.testing.assert_close(model.decode_step(tgt[:, t], cache), full[:, t], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="expected positions in \\('learned', 'sinusoidal'\\), got 'rotary'"):
        EncoderDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=1), positions="rotary")
