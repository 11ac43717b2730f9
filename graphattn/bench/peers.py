"""The peers the benchmarks measure graphattn against: one registry for the CPU benchmark
(:mod:`graphattn.bench.attention`) and the GPU benchmark (:mod:`graphattn.bench.gpu`).

Each peer is the standard way to run a pattern without graphattn. A :class:`Peer` says on which
devices it runs which patterns, where it has a backward, and builds a function ``fn(q, k, v) ->
out`` on ``[N, H, D]`` tensors (one-time work, such as a mask, a BlockMask or a compile, happens in
the build or the first call). A new peer is one function and one :func:`register` call; both
benchmarks take their method lists from :func:`names`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from graphattn.bench.cases import BLOCK, RADIUS

__all__ = ["Peer", "register", "get", "names", "dense_sdpa", "blocked_band", "gather_scatter", "sparse_csr",
           "band_block_mask", "flex_band", "hf_longformer", "hf_bigbird", "lucidrains_routing"]


@dataclass(frozen=True)
class Peer:
    """A benchmark peer.

    ``patterns`` maps a device type (``"cpu"``, ``"cuda"``) to the patterns the peer runs there;
    ``backward`` lists the device types where it has a backward. ``build(graph, pattern, n, H,
    D, device)`` returns ``fn(q, k, v) -> out`` (``[N, H, D]`` in and out)."""

    name: str
    summary: str
    patterns: dict
    backward: tuple
    build: Callable


_PEERS: dict[str, Peer] = {}


def register(peer: Peer) -> Peer:
    if not isinstance(peer, Peer):
        raise TypeError(f"expected a Peer, got {type(peer).__name__}")
    if peer.name in _PEERS:
        raise ValueError(f"expected a new peer name, got {peer.name!r} (registered already)")
    _PEERS[peer.name] = peer
    return peer


def get(name: str) -> Peer:
    if name not in _PEERS:
        raise ValueError(f"expected a peer in {sorted(_PEERS)}, got {name!r}")
    return _PEERS[name]


def names(device_type: str | None = None) -> tuple[str, ...]:
    """Registered peers in registration order; with ``device_type``, those that run there."""
    return tuple(n for n, p in _PEERS.items() if device_type is None or device_type in p.patterns)


def _bhnd(t):
    """[N, H, D] -> [1, H, N, D] view (the layout SDPA and FlexAttention take)."""
    return t.transpose(0, 1)[None]


# ---------------------------------------------------------------------------------------------
# The computations


def dense_sdpa(q, k, v, mask=None):
    """``scaled_dot_product_attention`` over all n^2 pairs, the graph as a bool mask (``[Nq, Nk]``,
    rows are queries) or no mask (full attention). q, k, v: [N, H, D]."""
    out = torch.nn.functional.scaled_dot_product_attention(_bhnd(q), _bhnd(k), _bhnd(v), attn_mask=mask)
    return out[0].transpose(0, 1)


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
    s = s.masked_fill(~ok[:, None].to(s.device), float("-inf"))
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


_flex_compiled = None


def _compiled_flex():
    global _flex_compiled
    if _flex_compiled is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # One compile per shape: raise dynamo's recompile limit so no size falls back to eager.
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled


def band_block_mask(n: int, radius: int, device="cpu", block: int = 128):
    """FlexAttention's BlockMask of the band, the way a FlexAttention user writes it (a
    ``mask_mod``), its block lists built from the band's formula (``create_block_mask`` would
    evaluate all n^2 cells)."""
    from torch.nn.attention.flex_attention import BlockMask

    nb = -(-n // block)
    w = 2 * (-(-radius // block)) + 1  # key blocks a query block can touch
    qb = torch.arange(nb, device=device)[:, None]
    kb = qb - w // 2 + torch.arange(w, device=device)[None, :]
    inside = (kb >= 0) & (kb < nb)
    # Full block: the farthest pair is within the radius and the block lies inside [0, n).
    far = torch.maximum((qb * block - (kb * block + block - 1)).abs(), (qb * block + block - 1 - kb * block).abs())
    full = inside & (far <= radius) & ((qb + 1) * block <= n) & ((kb + 1) * block <= n)
    partial = inside & ~full

    def lists(sel):
        counts = sel.sum(-1).to(torch.int32)
        idx = torch.zeros(nb, max(nb, w), dtype=torch.int32, device=device)  # flex: >= one slot per key block
        order = torch.sort((~sel).to(torch.int8), dim=-1, stable=True).indices
        idx[:, :w] = torch.gather(kb.clamp(0, nb - 1), 1, order).to(torch.int32)
        return counts[None, None], idx[None, None]

    def band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= radius

    kn, ki = lists(partial)
    fn, fi = lists(full)
    return BlockMask.from_kv_blocks(kn, ki, fn, fi, BLOCK_SIZE=block, mask_mod=band, seq_lengths=(n, n))


def flex_band(n: int, radius: int, device="cpu", block: int = 128):
    """Compiled FlexAttention over :func:`band_block_mask`; returns ``fn(q, k, v)`` on ``[N, H, D]``."""
    mask = band_block_mask(n, radius, device, block)
    flex = _compiled_flex()
    return lambda q, k, v: flex(_bhnd(q), _bhnd(k), _bhnd(v), block_mask=mask)[0].transpose(0, 1)


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


# ---------------------------------------------------------------------------------------------
# The registry


def _build_dense(graph, pattern, n, H, D, device):
    if torch.device(device).type == "cuda":
        # On a GPU the dense reference is flash attention over all n^2 pairs without a mask (a
        # mask would cost n^2 bytes and take SDPA off its flash kernel): the dense speed bound.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return dense_sdpa(q, k, v)
        return fn
    mask = graph.to_dense().to(device)
    return lambda q, k, v: dense_sdpa(q, k, v, mask)


def _build_flex(graph, pattern, n, H, D, device):
    if pattern == "band":
        return flex_band(n, RADIUS, device)
    # Other patterns: FlexAttention over graphattn's plan-built BlockMask (the FLEX backend).
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import use

    def fn(q, k, v):
        with use("flex"):
            return graph_attention(q, k, v, graph)
    return fn


def _build_hf(make):
    def build(graph, pattern, n, H, D, device):
        layer = make(n, H, D)
        # HF layers take hidden states [1, N, H * D] and project them; q's values serve as those.
        return lambda q, k, v: layer(q.reshape(n, H * D))
    return build


_ALL = ("band", "bigbird", "random")
register(Peer("dense_sdpa", "scaled_dot_product_attention over all n^2 pairs (CPU: the graph as a bool mask; "
                            "CUDA: flash attention without a mask)",
              {"cpu": _ALL, "cuda": _ALL}, ("cpu", "cuda"), _build_dense))
register(Peer("blocked", "plain-torch blocked sliding window (3r keys per query block, band mask)",
              {"cpu": ("band",)}, ("cpu",),
              lambda graph, pattern, n, H, D, device: (lambda q, k, v: blocked_band(q, k, v, RADIUS))))
register(Peer("hf_longformer", "HF transformers' LongformerSelfAttention (projections included)",
              {"cpu": ("band",)}, ("cpu",), _build_hf(lambda n, H, D: hf_longformer(n, H, D, RADIUS))))
register(Peer("gather_scatter", "PyG TransformerConv's core: gather per edge, utils.softmax, scatter",
              {"cpu": _ALL, "cuda": _ALL}, ("cpu", "cuda"),
              lambda graph, pattern, n, H, D, device: (
                  lambda q, k, v, ei=graph.edge_index.to(device): gather_scatter(q, k, v, ei))))
register(Peer("sparse_csr", "torch.sparse CSR per head (sampled_addmm, segment softmax, spmm)",
              {"cpu": ("random",)}, ("cpu",),
              lambda graph, pattern, n, H, D, device: (
                  lambda q, k, v, p=graph.query_ptr, c=graph.edge_index[0]: sparse_csr(q, k, v, p, c))))
register(Peer("flex", "compiled FlexAttention (band: the native mask_mod; others: graphattn's BlockMask)",
              {"cpu": ("band",), "cuda": _ALL}, ("cuda",), _build_flex))
register(Peer("hf_bigbird", "HF transformers' BigBirdBlockSparseAttention (projections included)",
              {"cpu": ("bigbird",)}, ("cpu",), _build_hf(lambda n, H, D: hf_bigbird(n, H, D, BLOCK))))


def lucidrains_routing(n: int, dim: int, heads: int, window: int):
    """lucidrains' ``routing-transformer`` (``pip install routing-transformer``) self-attention
    with every head routed: ``SelfAttention(dim, depth=1, max_seq_len=n, heads,
    local_attn_heads=0, window_size=window, rel_pos_emb=False)``, ``n // window`` k-means
    clusters of ``window`` queries and keys; ``layer(x [B, n, dim]) -> (out, commitment loss)``."""
    from routing_transformer.routing_transformer import SelfAttention

    return SelfAttention(dim=dim, depth=1, max_seq_len=n, heads=heads, local_attn_heads=0, window_size=window,
                         rel_pos_emb=False)
