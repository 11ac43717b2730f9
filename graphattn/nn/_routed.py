"""Shared machinery of the content-based attention layers (LSH, routing). Internal.

A content-based layer attends within *groups* chosen by content: the chunks of an LSH round
(tokens sorted by bucket), the clusters of a routing head. Each group's members are gathered
into a contiguous run of *slots*, so the graph over the slots is the same block layout every
forward. LSH chunks (each attends itself and the previous chunk) use that layout: it is built
once, its tiling plan is cached on it, and one engine call
(:func:`graphattn.nn.functional.graph_attention`, heads and rounds folded into the rows) runs
every chunk of every sample and head. Routing clusters are dense blocks, so they need no graph:
:func:`block_attention` attends them all with batched matmuls. Content only changes which token
sits in which slot (a gather) and a ``-inf`` mask (causal masking, duplicates).

Several groups can hold the same (query, key) pair: LSH rounds, overlapping routing clusters.
Every group is its own partial attention, returned with its log-sum-exp, and a token's partials
are merged by the log-sum-exp rule (:func:`graphattn.nn.functional.merge_attention`, or
:func:`merge_rows` when tokens have different numbers of partials). So that the result is the
attention over the *union* graph (each key once), a pair is kept in the first group that holds
it and masked in the later ones: Reformer's duplicate correction in exact form (Reformer
subtracts ``log(count)`` from each copy's score; keeping one copy gives the same softmax).
A token left without keys (no group, or every key masked) attends itself: its output is its own
value, which :func:`attend_self_where_keyless` writes in after the merge.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from graphattn.compose import stack_heads
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.nn._engine import FP32_MAX_LOGIT, score_bound

__all__ = ["fold_heads", "unfold_heads", "block_layout", "cached_layout", "block_attention",
           "merge_rows", "attend_self_where_keyless", "per_head_graphs", "routed_output"]


def fold_heads(t: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D]`` -> ``[B * H * N, 1, D]``: token ``n`` of sample ``b``, head ``h`` is row
    ``(b * H + h) * N + n`` (its *token slot*)."""
    B, N, H, D = t.shape
    return t.permute(0, 2, 1, 3).reshape(B * H * N, 1, D)


def unfold_heads(t: torch.Tensor, B: int, N: int, H: int) -> torch.Tensor:
    """The inverse of :func:`fold_heads`: ``[B * H * N, 1, D]`` -> ``[B, N, H, D]``."""
    return t.view(B, H, N, t.shape[-1]).permute(0, 2, 1, 3)


def block_layout(num_blocks: int, block_rows: int, key: torch.Tensor, query: torch.Tensor) -> AttentionGraph:
    """``num_blocks`` copies of one block's edges (``key``, ``query`` rows in ``[0, block_rows)``,
    unique and sorted by (query, key)) on the diagonal: block ``b`` owns rows
    ``[b * block_rows, (b + 1) * block_rows)``. Edge ``b * len(key) + e`` is copy ``b`` of edge
    ``e``, so per-edge tensors of the layout are ``[num_blocks, len(key)]`` views."""
    off = torch.arange(num_blocks, device=key.device)[:, None] * block_rows
    edge_index = torch.stack([(key + off).reshape(-1), (query + off).reshape(-1)])
    return AttentionGraph._trusted(edge_index, num_blocks * block_rows)


# Block layouts by (kind, shape, device), least recently used last: layers of one model share
# them (a layout and its plan cost a few bytes per edge, as any graph's do), and a few shapes stay.
_LAYOUTS: "OrderedDict[tuple, AttentionGraph]" = OrderedDict()
_MAX_LAYOUTS = 4


def cached_layout(key: tuple, build) -> AttentionGraph:
    """The layout ``build()`` made for ``key`` (shapes and device), kept among the last few used;
    the engine caches its tiling plan on it, so a training loop plans it once."""
    graph = _LAYOUTS.pop(key, None)
    if graph is None:
        while len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.popitem(last=False)
        graph = build()
    _LAYOUTS[key] = graph
    return graph


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                    dropout_p: float = 0.0):
    """Attention within ``K`` dense blocks: query row ``p`` of block ``c`` attends every key row of
    block ``c`` that ``mask`` ``[K, T, S]`` (True: masked) leaves, ``q`` ``[K, T, D]``, ``k`` ``[K, S, D]``,
    ``v`` ``[K, S, Dv]``. Returns ``(out [K, T, Dv], lse [K, T])``, ``lse`` the log-sum-exp of
    each row's scores (``-inf`` and a zero output for a row without keys), both differentiable
    (the gradient of ``lse`` is exact, so partials merge by the log-sum-exp rule).

    The same result as :func:`graphattn.nn.functional.graph_attention` over the block-diagonal
    graph with a ``-inf`` edge bias where ``mask`` holds, computed as batched matmuls: every block
    is dense, so the per-edge bias is a dense ``[K, T, S]`` mask and no tiling is needed. As the
    engine does, half inputs are computed in float32 and float32 in float64 when the scores could
    exceed ``FP32_MAX_LOGIT`` (:func:`graphattn.nn._engine.score_bound`); ``out`` comes back in
    ``q``'s dtype, ``lse`` in the accumulation dtype. Dropout (probability ``dropout_p``) drops
    probabilities after the normaliser is summed, as the engine's does, drawing from torch's
    default generator. The backward recomputes the probabilities from ``lse`` (flash attention's
    backward), so only ``out``, ``lse`` and the dropout mask are kept."""
    bound = score_bound(q.flatten(0, -2).unsqueeze(1), k.flatten(0, -2).unsqueeze(1), scale)
    acc = torch.float64 if q.dtype == torch.float64 or not bound <= FP32_MAX_LOGIT else torch.float32
    return _BlockAttention.apply(q, k, v, mask, scale, dropout_p, acc)


def _block_scores(q, k, mask, scale):
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    return s if mask is None else s.masked_fill_(mask, float("-inf"))


class _BlockAttention(torch.autograd.Function):
    """:func:`block_attention`'s forward and recomputing backward: a handful of passes over the
    ``[K, T, S]`` scores each way, where autograd through the same ops keeps the scores, the
    probabilities and a gradient of every step."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, dropout_p, acc):
        qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
        e = _block_scores(qa, ka, mask, scale)
        top = e.amax(-1, keepdim=True)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)  # keyless rows: exp(-inf) = 0
        e = e.sub_(top).exp_()
        total = e.sum(-1)
        has = total > 0
        safe = torch.where(has, total, torch.ones_like(total))  # keyless rows: 0 / 1
        keep = None
        if dropout_p:
            keep = torch.empty_like(e).bernoulli_(1.0 - dropout_p).to(torch.bool)
            e = e.mul_(keep).div_(1.0 - dropout_p)
        out = torch.matmul(e, va).div_(safe[..., None])
        lse = torch.where(has, top[..., 0] + torch.log(safe), torch.full_like(total, float("-inf")))
        ctx.save_for_backward(qa, ka, va, mask, out, lse, keep)
        ctx.scale, ctx.dropout_p, ctx.dtypes = scale, dropout_p, (q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        qa, ka, va, mask, out, lse, keep = ctx.saved_tensors
        scale, p = ctx.scale, ctx.dropout_p
        dO = dout.to(out.dtype)  # gradients are materialised: zeros, never None
        keyless = torch.isinf(lse)
        # P = exp(s - lse): recomputed by the forward's own score ops; 0 on keyless rows.
        P = _block_scores(qa, ka, mask, scale).sub_(torch.where(keyless, float("inf"), lse)[..., None]).exp_()
        Pd = P if keep is None else P * keep / (1.0 - p)
        dv = torch.matmul(Pd.transpose(-1, -2), dO)
        dP = torch.matmul(dO, va.transpose(-1, -2))
        if keep is not None:
            dP = dP.mul_(keep).div_(1.0 - p)
        # dS = P * (dP - rowsum(dO * out) + dlse): d lse / d s = P.
        delta = (dO * out).sum(-1) - torch.where(keyless, torch.zeros_like(dlse), dlse.to(out.dtype))
        dS = P.mul_(dP.sub_(delta[..., None]))
        dq = torch.matmul(dS, ka).mul_(scale)
        dk = torch.matmul(dS.transpose(-1, -2), qa).mul_(scale)
        dtq, dtk, dtv = ctx.dtypes
        return dq.to(dtq), dk.to(dtk), dv.to(dtv), None, None, None, None


def merge_rows(outs: torch.Tensor, lses: torch.Tensor, index: torch.Tensor, size: int):
    """The log-sum-exp rule of :func:`~graphattn.nn.functional.merge_attention` for partials given
    as rows: row ``r`` of ``outs`` ``[R, H, Dv]`` / ``lses`` ``[R, H]`` is a partial attention of
    target ``index[r]`` over a key set disjoint from the other partials of that target. Returns
    ``(out [size, H, Dv], lse [size, H])``; a target without rows (or with only keyless ones) gets
    zeros and ``-inf``. Differentiable in ``outs`` and ``lses``; NaN in a partial's ``lse``
    makes its target's result NaN."""
    H = lses.shape[1]
    dtype = lses.dtype
    idx = index[:, None].expand(-1, H)
    top = torch.full((size, H), float("-inf"), dtype=dtype, device=lses.device)
    top = top.scatter_reduce(0, idx, lses.detach(), "amax")
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    live = (lses > float("-inf")) | torch.isnan(lses)
    # Keyless partials give exp(-inf) = 0; the double where keeps their gradient 0, not NaN.
    e = torch.exp(torch.where(live, lses, torch.zeros_like(lses)) - top[index])
    e = torch.where(live, e, torch.zeros_like(e))
    total = torch.zeros(size, H, dtype=dtype, device=lses.device).index_add(0, index, e)
    has = (total > 0) | torch.isnan(total)
    safe = torch.where(has, total, torch.ones_like(total))
    lse = torch.where(has, top + torch.log(safe), torch.full_like(total, float("-inf")))
    w = (e / safe[index]).to(outs.dtype)
    out = torch.zeros(size, H, outs.shape[-1], dtype=outs.dtype, device=outs.device)
    return out.index_add(0, index, w[..., None] * outs), lse


def attend_self_where_keyless(out: torch.Tensor, lse: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0):
    """A token whose merged attention has no key (``lse = -inf``) attends itself alone: its
    output is its own value (its one probability, 1, dropped with probability ``dropout_p`` and
    otherwise scaled by ``1 / (1 - dropout_p)``, drawn from torch's default generator as the
    engine's dropout is). ``out``, ``v`` ``[S, 1, D]`` in token-slot rows, ``lse`` ``[S, 1]``."""
    keyless = (lse == float("-inf"))[..., None]
    own = v.to(out.dtype)
    if dropout_p:
        keep = torch.empty(own.shape[0], 1, 1, dtype=own.dtype, device=own.device).bernoulli_(1.0 - dropout_p)
        own = own * keep / (1.0 - dropout_p)
    return torch.where(keyless, own, out)


def per_head_graphs(key_slot, query_slot, B: int, H: int, N: int, label: EdgeLabel) -> list[AttentionGraph]:
    """The per-head layout (``compose.stack_heads``) of every sample from edges between token
    slots (:func:`fold_heads` rows), in token coordinates. Repeated edges are merged."""
    sample_head = query_slot // N
    graphs = []
    for b in range(B):
        heads = []
        for h in range(H):
            sel = sample_head == b * H + h
            ei = torch.stack([key_slot[sel] % N, query_slot[sel] % N]).cpu()
            heads.append(AttentionGraph.from_edge_index(
                ei, N, edge_label=torch.full((ei.shape[1],), int(label), dtype=torch.int8)))
        graphs.append(stack_heads(heads))
    return graphs


def routed_output(out_proj, out: torch.Tensor, batched: bool, graph_edges, label: EdgeLabel):
    """A content-based layer's result: ``out_proj`` of ``out [B, N, H, D]`` (unbatched input:
    no batch dim), and, when ``graph_edges`` is a callable (asked for with ``return_graph``), the
    per-head graphs of every sample built from the ``(key_slot, query_slot)`` it returns."""
    B, N, H, D = out.shape
    out = out_proj(out.reshape(B, N, H * D))
    if not batched:
        out = out[0]
    if graph_edges is None:
        return out
    graphs = per_head_graphs(*graph_edges(), B, H, N, label)
    return out, (graphs if batched else graphs[0])
