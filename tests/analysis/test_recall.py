"""graphattn.analysis.recall against plain dense float64 softmax attention."""

import math

import pytest
import torch

from graphattn import rules
from graphattn.analysis import attention_recall, output_error, topk_recall


def qkv(n, H, D, seed, dtype=torch.float64, sharp=3.0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda d: (torch.randn(n, H, d, generator=gen) * sharp).to(dtype)  # noqa: E731
    return mk(D), mk(D), mk(D + 1)


def dense_probs(q, k, scale=None):
    q, k = q.double(), k.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.softmax(torch.einsum("ihd,jhd->hij", q, k) * scale, dim=-1)  # [H, n, n]


def token_mask(g, n, heads):
    """[H, n, n] bool: mask[h, i, j] = query i attends key j in head h, tokens only."""
    ei = g.edge_index
    keep = (ei[0] < n) & (ei[1] < n)
    m = torch.zeros(heads, n, n, dtype=torch.bool)
    hm = g.head_mask[keep] if g.head_mask is not None else torch.ones(int(keep.sum()), heads, dtype=torch.bool)
    for h in range(heads):
        sel = hm[:, h]
        m[h, ei[1, keep][sel], ei[0, keep][sel]] = True
    return m


def dense_sparse_attention(q, k, v, mask, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    s = s.masked_fill(~mask, -math.inf)
    p = torch.softmax(s, dim=-1)
    p = torch.where(mask.any(-1, keepdim=True), p, torch.zeros_like(p))
    return torch.einsum("hij,jhd->ihd", p, v)


CASES = [
    ("band", lambda n: rules.band(n, radius=3), 2),
    ("bigbird", lambda n: rules.bigbird(n, block_size=8, seed=1), 3),
    ("random", lambda n: rules.random(n, num_random_keys=5, seed=2), 1),
    ("star", lambda n: rules.star_transformer(n), 2),  # extra nodes: token rows only
    ("etc", lambda n: rules.etc(n, num_global=2, radius=2), 2),
    ("longformer_heads", lambda n: rules.longformer(n, radius=2, dilation=[1, 3], global_indices=[0]), 2),
    ("lsh", lambda n: rules.lsh(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), num_buckets=4), 1),
]


@pytest.mark.parametrize("name,make,H", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", [None, 7])
def test_recall_topk_and_error_against_dense(name, make, H, chunk):
    n, D = 70, 8
    g = make(n)
    q, k, v = qkv(n, H, D, seed=len(name))
    P = dense_probs(q, k)
    mask = token_mask(g, n, H)
    expected = (P * mask).sum(-1).t()  # [n, H]
    rec = attention_recall(g, q, k, chunk=chunk)
    assert rec.shape == (n, H) and rec.dtype == torch.float64
    torch.testing.assert_close(rec, expected, rtol=1e-10, atol=1e-12)

    budget = mask.sum(-1).t()  # keys per query and head
    top = topk_recall(q, k, g, chunk=chunk)
    ref_top = torch.stack([torch.stack([P[h, i].sort(descending=True).values[: int(budget[i, h])].sum()
                                        for h in range(H)]) for i in range(n)])
    torch.testing.assert_close(top, ref_top, rtol=1e-10, atol=1e-12)
    assert bool((rec <= top + 1e-12).all())
    torch.testing.assert_close(topk_recall(q, k, budget, chunk=chunk), top)

    err = output_error(g, q, k, v, chunk=chunk)
    dense = dense_sparse_attention(q, k, v, torch.ones_like(mask))
    sparse = dense_sparse_attention(q, k, v, mask)
    assert err == pytest.approx(float((sparse - dense).norm() / dense.norm()), rel=1e-8)


def test_full_graph_keeps_everything():
    n, H, D = 40, 2, 16
    q, k, v = qkv(n, H, D, seed=3, dtype=torch.float32)
    g = rules.full(n)
    rec = attention_recall(g, q, k)
    assert rec.dtype == torch.float32
    torch.testing.assert_close(rec, torch.ones(n, H), rtol=0, atol=1e-5)
    assert output_error(g, q, k, v) < 1e-5
    torch.testing.assert_close(topk_recall(q, k, n), torch.ones(n, H), rtol=0, atol=1e-5)
    assert bool((topk_recall(q, k, 0) == 0).all())


def test_two_dimensional_inputs_are_one_head_and_scale():
    n, D = 30, 6
    q, k, v = (t[:, 0] for t in qkv(n, 1, D, seed=4))
    g = rules.band(n, radius=2)
    rec = attention_recall(g, q, k, scale=0.3)
    assert rec.shape == (n, 1)
    P = dense_probs(q[:, None], k[:, None], scale=0.3)
    torch.testing.assert_close(rec[:, 0], (P[0] * g.to_dense()).sum(-1))
    err = output_error(g, q, k, v[:, :D + 1], scale=0.3)
    mask = g.to_dense()[None]
    dense = dense_sparse_attention(q[:, None], k[:, None], v[:, None], torch.ones_like(mask), scale=0.3)
    sparse = dense_sparse_attention(q[:, None], k[:, None], v[:, None], mask, scale=0.3)
    assert err == pytest.approx(float((sparse - dense).norm() / dense.norm()), rel=1e-8)


def test_keyless_query_keeps_nothing():
    n = 10
    g = rules.band(n, radius=1).query_slice(0, 5)  # queries 5.. have no keys
    q, k, v = qkv(n, 1, 4, seed=5)
    rec = attention_recall(g, q, k)
    assert bool((rec[5:] == 0).all()) and bool((rec[:5] > 0).all())
    assert bool((topk_recall(q, k, g)[5:] == 0).all())


def test_errors():
    g = rules.band(8, radius=1)
    q = torch.randn(8, 2, 4)
    with pytest.raises(TypeError, match="AttentionGraph"):
        attention_recall(g.to_dense(), q, q)
    with pytest.raises(TypeError, match="q to be a torch.Tensor"):
        attention_recall(g, q.numpy(), q)
    with pytest.raises(TypeError, match="floating-point"):
        attention_recall(g, q.long(), q.long())
    with pytest.raises(TypeError, match="one dtype"):
        attention_recall(g, q, q.double())
    with pytest.raises(ValueError, match="same shape"):
        attention_recall(g, q, q[:, :1])
    with pytest.raises(ValueError, match="g.num_nodes = 8 rows"):
        attention_recall(g, q[:5], q[:5])
    with pytest.raises(ValueError, match="expected 2 heads"):
        attention_recall(rules.longformer(8, radius=1, dilation=[1, 2]), q[:, :1], q[:, :1])
    with pytest.raises(ValueError, match="chunk >= 1"):
        attention_recall(g, q, q, chunk=0)
    with pytest.raises(ValueError, match=r"budget in \[0, 8\]"):
        topk_recall(q, q, 9)
    with pytest.raises(ValueError, match="budget of shape"):
        topk_recall(q, q, torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match="budget to hold integers"):
        topk_recall(q, q, torch.ones(8))
    with pytest.raises(ValueError, match="expected v of shape"):
        output_error(g, q, q, torch.randn(8, 3, 4))
    with pytest.raises(TypeError, match="scale to be a real number"):
        output_error(g, q, q, q, scale="big")
