import pytest
import torch
from tests.models.models_tasks import marker_task, train_classifier

from graphattn.models import StarTransformerClassifier


def _attend(attn, query, context):
    """One multi-head attention of a single query row over its context rows (float64, dense)."""
    H, D = attn.num_heads, attn.head_dim
    q = attn.q_proj(query).view(H, D)
    k = attn.k_proj(context).view(-1, H, D)
    v = attn.v_proj(context).view(-1, H, D)
    w = torch.softmax(torch.einsum("hd,jhd->hj", q, k) / D**0.5, dim=-1)
    return attn.out_proj(torch.einsum("hj,jhd->hd", w, v).reshape(H * D))


def star_reference(model, ids, cyclic=True):
    """The paper's update written per node from its definition (no graph): ring phase over
    [h_{i-1}, h_i, h_{i+1}, e_i, s], then radical phase over [s, h_1..h_n]."""
    n = len(ids)
    e = model.token_embedding(torch.tensor(ids)) + model.position_embedding(torch.arange(n))
    h, s = e.clone(), e.mean(0)
    for t in range(model.num_layers):
        new = []
        for i in range(n):
            left, right = (i - 1) % n, (i + 1) % n
            if not cyclic:
                left, right = max(i - 1, 0), min(i + 1, n - 1)
            rows = sorted({left, i, right})
            ctx = torch.cat([h[rows], e[i : i + 1], s[None]])
            new.append(model.ring_norm[t](torch.relu(_attend(model.ring_attn[t], h[i], ctx))))
        h = torch.stack(new)
        s = model.radical_norm[t](torch.relu(_attend(model.radical_attn[t], s, torch.cat([s[None], h]))))
    return model.classifier(s)


@pytest.mark.parametrize("cyclic", [True, False])
def test_matches_per_node_reference(cyclic):
    torch.manual_seed(0)
    model = StarTransformerClassifier(12, 8, 2, 2, 3, cyclic=cyclic).double()
    for ids in ([3, 4, 5, 6, 7, 8, 9], [5], [2, 3]):
        ref = star_reference(model, ids, cyclic)
        torch.testing.assert_close(model(torch.tensor([ids]))[0], ref, rtol=1e-10, atol=1e-12)


def test_padding_gives_the_unpadded_logits():
    torch.manual_seed(1)
    model = StarTransformerClassifier(12, 8, 2, 2, 3, max_pool=True).double()
    seqs = [[3, 4, 5, 6, 7, 8], [9, 10], [4, 4, 4, 11]]
    padded = torch.tensor([s + [0] * (6 - len(s)) for s in seqs])
    out = model(padded)
    for b, s in enumerate(seqs):
        torch.testing.assert_close(out[b], model(torch.tensor([s]))[0], rtol=1e-10, atol=1e-12)
    # padding anywhere in a row is removed the same way
    inner = torch.tensor([[9, 0, 10, 0, 0]])
    torch.testing.assert_close(model(inner)[0], out[1], rtol=1e-10, atol=1e-12)


def test_relay_sees_every_token_after_one_layer_and_gradients_reach_all():
    torch.manual_seed(2)
    model = StarTransformerClassifier(12, 8, 2, 1, 2).double()
    tokens = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10, 11, 3]])
    seen = []

    def keep(module, inputs, output):
        output.retain_grad()
        seen.append(output)

    hook = model.token_embedding.register_forward_hook(keep)
    model(tokens)[0, 0].backward()
    hook.remove()
    assert bool((seen[0].grad.abs().sum(-1) > 0).all())


@pytest.mark.slow  # minutes on 2 cores: runs in CI after the default suite
def test_learns_a_long_range_task():
    """Label: how many of two marker tokens, one near each end of a noisy sequence, are 1
    (one marker alone gives at most 50%). Variable lengths, padded batches."""
    torch.manual_seed(3)
    model = StarTransformerClassifier(16, 32, 4, 2, 3)
    acc = train_classifier(model, marker_task, steps=120, seed=0)
    assert acc >= 0.9, acc


def test_errors():
    model = StarTransformerClassifier(12, 8, 2, 1, 3, max_len=8)
    with pytest.raises(ValueError, match="sample 1 is all padding_idx = 0"):
        model(torch.tensor([[3, 4], [0, 0]]))
    with pytest.raises(TypeError, match="expected tokens to hold integer token ids"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"expected tokens of shape \[B, n\], got \[3\]"):
        model(torch.tensor([3, 4, 5]))
    with pytest.raises(ValueError, match=r"expected tokens ids in \[0, vocab_size = 12\), got 12"):
        model(torch.tensor([[3, 12]]))
    with pytest.raises(ValueError, match="expected at most max_len = 8 non-padding tokens per sample, got 9"):
        model(torch.full((1, 9), 3))
    with pytest.raises(ValueError, match="expected padding_idx <= 11, got 12"):
        StarTransformerClassifier(12, 8, 2, 1, 3, padding_idx=12)
    assert StarTransformerClassifier(12, 8, 2, 1, 3, padding_idx=None)(torch.tensor([[0, 0]])).shape == (1, 3)


def test_attention_mask_instead_of_the_padding_id():
    torch.manual_seed(2)
    model = StarTransformerClassifier(12, 8, 2, 2, 3, padding_idx=None).double()
    seqs = [[3, 0, 5, 6], [9], [0, 0, 4]]  # 0 is an ordinary token here
    tokens = torch.tensor([s + [7] * (4 - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (4 - len(s)) for s in seqs])
    out = model(tokens, attention_mask=mask)
    for b, s in enumerate(seqs):
        torch.testing.assert_close(out[b], model(torch.tensor([s]))[0], rtol=1e-9, atol=1e-9)
