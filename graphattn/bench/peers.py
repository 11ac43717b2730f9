"""Peer implementations the attention benchmark measures graphattn against (same inputs, same
run). Each is the standard way to run that pattern without graphattn."""

from __future__ import annotations

import math

import torch

__all__ = ["dense_sdpa", "blocked_band", "gather_scatter", "sparse_csr", "flex_band", "hf_longformer",
           "hf_bigbird"]


def dense_sdpa(q, k, v, mask):
    """``scaled_dot_product_attention`` over all n^2 pairs with the graph as a bool mask.
    q, k, v: [N, H, D]; mask [N, N] (rows are queries)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def blocked_band(q, k, v, radius: int):
    """Plain-torch blocked sliding window: query blocks of ``radius`` attend the previous, own
    and next key blocks (3 * radius keys) under the band mask: the classic chunked
    implementation (1.5x the band's FLOPs)."""
    n, H, D = q.shape
    b = radius
    nb = -(-n // b)
    pad = nb * b - n
    qp = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, pad)).view(nb, b, H, D).transpose(1, 2)
    kp = torch.nn.functional.pad(k, (0, 0, 0, 0, b, pad + b))
    vp = torch.nn.functional.pad(v, (0, 0, 0, 0, b, pad + b))
    kw = kp.unfold(0, 3 * b, b).permute(0, 1, 3, 2)  # [nb, H, 3b, D]
    vw = vp.unfold(0, 3 * b, b).permute(0, 1, 3, 2)
    s = torch.matmul(qp, kw.transpose(-1, -2)) / math.sqrt(D)  # [nb, H, b, 3b]
    i = torch.arange(nb)[:, None, None] * b + torch.arange(b)[None, :, None]
    j = torch.arange(nb)[:, None, None] * b - b + torch.arange(3 * b)[None, None, :]
    ok = ((i - j).abs() <= radius) & (j >= 0) & (j < n)
    s = s.masked_fill(~ok[:, None], float("-inf"))
    out = torch.matmul(torch.softmax(s, dim=-1), vw)  # [nb, H, b, D]
    return out.transpose(1, 2).reshape(nb * b, H, D)[:n]


def gather_scatter(q, k, v, edge_index):
    """The message-passing core of PyG's TransformerConv: gather per edge, segment softmax
    (``torch_geometric.utils.softmax``), scatter-add. Materialises [E, H, D]."""
    from torch_geometric.utils import scatter, softmax

    j, i = edge_index
    alpha = (q[i] * k[j]).sum(-1) / math.sqrt(q.shape[-1])
    alpha = softmax(alpha, i, num_nodes=q.shape[0])
    return scatter(v[j] * alpha[..., None], i, dim=0, dim_size=q.shape[0], reduce="sum")


def sparse_csr(q, k, v, crow, col):
    """torch.sparse CSR per head: ``sampled_addmm`` scores, a segment softmax on the CSR values,
    ``spmm`` with the values."""
    n, H, D = q.shape
    lengths = crow.diff()
    outs = []
    for h in range(H):
        mask = torch.sparse_csr_tensor(crow, col, torch.ones(col.numel(), dtype=q.dtype), (n, n))
        s = torch.sparse.sampled_addmm(mask, q[:, h] / math.sqrt(D), k[:, h].t(), beta=0.0)
        vals = s.values()
        mx = torch.segment_reduce(vals.detach(), "max", lengths=lengths)
        e = torch.exp(vals - mx.repeat_interleave(lengths))
        p = e / torch.segment_reduce(e, "sum", lengths=lengths).repeat_interleave(lengths)
        outs.append(torch.sparse_csr_tensor(crow, col, p, (n, n)) @ v[:, h])
    return torch.stack(outs, dim=1)


def flex_band(n: int, radius: int):
    """Compiled FlexAttention with a band BlockMask; returns (fn, blockmask_build_seconds)."""
    import time

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def band(b, h, qi, ki):
        return (qi - ki).abs() <= radius

    t0 = time.perf_counter()
    block_mask = create_block_mask(band, None, None, n, n, device="cpu")
    build = time.perf_counter() - t0
    compiled = torch.compile(flex_attention)

    def fn(q, k, v):
        return compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                        block_mask=block_mask)[0].transpose(0, 1)

    return fn, build


def hf_longformer(n: int, H: int, D: int, radius: int):
    """HF transformers' LongformerSelfAttention (window 2r, no global tokens); x -> out."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    cfg = LongformerConfig(hidden_size=H * D, num_attention_heads=H, attention_window=[2 * radius],
                           attention_probs_dropout_prob=0.0)
    layer = LongformerSelfAttention(cfg, layer_id=0)
    mask = torch.zeros(1, n)

    def fn(x):
        return layer(x[None], attention_mask=mask, is_index_masked=mask < 0,
                     is_index_global_attn=mask > 0, is_global_attn=False)[0]

    return fn


def hf_bigbird(n: int, H: int, D: int, block: int = 64, random_blocks: int = 3, seed: int = 0):
    """HF transformers' BigBirdBlockSparseAttention (ITC, 3 window + r random + 2 global blocks)."""
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    cfg = BigBirdConfig(hidden_size=H * D, num_attention_heads=H, attention_type="block_sparse",
                        block_size=block, num_random_blocks=random_blocks, max_position_embeddings=n)
    layer = BigBirdBlockSparseAttention(cfg, seed=seed)
    nb = n // block
    band_mask = torch.ones(1, 1, nb - 4, block, 3 * block)
    from_mask = torch.ones(1, 1, n, 1)
    to_mask = torch.ones(1, 1, 1, n)
    blocked = torch.ones(1, nb, block)

    def fn(x):
        return layer(x[None], band_mask=band_mask, from_mask=from_mask, to_mask=to_mask,
                     from_blocked_mask=blocked, to_blocked_mask=blocked)[0]

    return fn
