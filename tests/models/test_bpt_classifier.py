import pytest
import torch
from tests.models.models_tasks import marker_task, train_classifier
from tests.nn.reference import dense_attention, dense_bias

from graphattn import rules
from graphattn.models import BPTransformerClassifier
from graphattn.rules.bpt import bpt_levels


def bpt_reference(model, ids):
    """Dense float64 computation: inputs from the definition (span = mean of the tokens it
    covers + level embedding), layers as dense masked attention with the relative bias."""
    n = len(ids)
    sizes = bpt_levels(n)
    g = rules.bp_transformer(n, k=model.k)
    tok = model.token_embedding(torch.tensor(ids)) + model.position_embedding(torch.arange(n))
    rows, levels = [], []
    for lvl, size in enumerate(sizes):
        for v in range(size):
            lo, hi = v << lvl, min((v + 1) << lvl, n)
            rows.append(tok[v] if lvl == 0 else tok[lo:hi].mean(0))
            levels.append(lvl)
    x = torch.stack(rows) + model.level_embedding(torch.tensor(levels))
    N, E, H = g.num_nodes, model.embed_dim, model.num_heads
    mask = g.to_dense()
    for layer in model.layers:
        a = layer.attn
        h = layer.norm1(x)
        q, k, v = (p(h).view(N, H, E // H) for p in (a.q_proj, a.k_proj, a.v_proj))
        bias = dense_bias(g.edge_index, a.relative_bias.weight[g.relative], N, N)
        att, _ = dense_attention(q, k, v, mask, bias)
        x = x + a.out_proj(att.reshape(N, E))
        x = x + layer.ff(layer.norm2(x))
    return model.classifier(model.norm(x[-1]))


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_matches_dense_reference(n):
    torch.manual_seed(0)
    model = BPTransformerClassifier(12, 8, 2, 2, 3, k=1, max_len=32).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.attn.relative_bias.weight)
    ids = torch.randint(1, 12, (n,)).tolist()
    torch.testing.assert_close(model(torch.tensor([ids]))[0], bpt_reference(model, ids), rtol=1e-10, atol=1e-12)


def test_relative_vocabulary_covers_max_len():
    model = BPTransformerClassifier(12, 8, 2, 1, 3, k=2, max_len=100)
    g = rules.bp_transformer(100, k=2)
    assert model.num_relative == 5 * len(bpt_levels(100)) and int(g.relative.max()) < model.num_relative


def test_padding_gives_the_unpadded_logits():
    torch.manual_seed(1)
    model = BPTransformerClassifier(12, 8, 2, 2, 3, k=1).double()
    seqs = [[3, 4, 5, 6, 7, 8, 9], [9, 10], [4], [4, 4, 4, 11, 5]]
    padded = torch.tensor([s + [0] * (7 - len(s)) for s in seqs])
    out = model(padded)
    for b, s in enumerate(seqs):
        torch.testing.assert_close(out[b], model(torch.tensor([s]))[0], rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # minutes on 2 cores: runs in CI after the default suite
def test_learns_a_long_range_task():
    torch.manual_seed(3)
    model = BPTransformerClassifier(16, 32, 4, 2, 3, k=2)
    acc = train_classifier(model, marker_task, steps=120, seed=0)
    assert acc >= 0.9, acc


def test_errors():
    model = BPTransformerClassifier(12, 8, 2, 1, 3, k=1, max_len=8)
    with pytest.raises(ValueError, match="expected at most max_len = 8 non-padding tokens per sample, got 9"):
        model(torch.full((1, 9), 3))
    with pytest.raises(ValueError, match="sample 0 is all padding_idx = 0"):
        model(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="expected k >= 1, got 0"):
        BPTransformerClassifier(12, 8, 2, 1, 3, k=0)
    assert BPTransformerClassifier(12, 8, 2, 1, 3, k=1, positions=False)(torch.tensor([[3, 4]])).shape == (1, 3)


def test_attention_mask_instead_of_the_padding_id():
    torch.manual_seed(2)
    model = BPTransformerClassifier(12, 8, 2, 2, 3, k=1, padding_idx=None).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.attn.relative_bias.weight)
    seqs = [[3, 0, 5, 6, 1, 2, 3, 4, 5], [9], [0, 0, 4, 11, 2]]
    tokens = torch.tensor([[7] * (9 - len(s)) + s for s in seqs])  # left padding
    mask = torch.tensor([[0] * (9 - len(s)) + [1] * len(s) for s in seqs], dtype=torch.bool)
    out = model(tokens, attention_mask=mask)
    for b, s in enumerate(seqs):
        torch.testing.assert_close(out[b], model(torch.tensor([s]))[0], rtol=1e-9, atol=1e-9)
