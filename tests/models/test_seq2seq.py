import pytest
import torch
from model_helpers import band_mask, dependency

from graphattn import rules
from graphattn.models import EncoderDecoder, GraphRule, cross_edge_index


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
    with pytest.raises(ValueError, match=r"expected memory of shape \[B, L, 8\]"):
        model.decode(torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64))
