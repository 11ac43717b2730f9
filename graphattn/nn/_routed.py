"""Shared machinery of the content-based attention layers (LSH, routing). Internal.

Content-based layers build one graph per (sample, head). Instead of a per-head layout (whose
union of edges every head would walk), the heads are folded into the node axis: sample ``b`` and
head ``h`` own the *slots* ``(b * H + h) * N + token``, and one single-head engine call runs over
the block-diagonal graph of all ``B * H`` graphs, so the work is exactly the sum of their edges.

The engine is fastest on dense tiles, and a content-based graph in token order is scattered.
Attention is permutation-equivariant (relabelling queries and keys together with their rows
leaves every output row unchanged), so the slots are laid out in an order given by the layer
(tokens sorted by bucket or by cluster): there a bucket or cluster is a contiguous run of rows
and its edges fill dense tiles. Queries and keys may use different orders (routing sorts queries
by their own cluster and keys by theirs): the engine then sees a bipartite ``edge_index``.
"""

from __future__ import annotations

import torch

from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.compose import stack_heads
from graphattn.nn.functional import _trust_edge_index, graph_attention

__all__ = ["check_input", "fold_heads", "slot_offsets", "add_lonely_self_loops", "routed_attention",
           "per_head_graphs", "routed_output"]


def check_input(x, embed_dim: int) -> tuple[torch.Tensor, bool]:
    """``x`` must be ``[N, E]`` or ``[B, N, E]`` floating; returns (``[B, N, E]``, batched)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape [N, E] or [B, N, E], got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"expected x of shape [N, E] or [B, N, E], got {list(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"expected x to be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[-1] != embed_dim:
        raise ValueError(f"expected x with last dim embed_dim = {embed_dim}, got {x.shape[-1]}")
    if x.shape[-2] < 1:
        raise ValueError(f"expected x with N >= 1 tokens, got shape {list(x.shape)}")
    batched = x.dim() == 3
    return (x if batched else x.unsqueeze(0)), batched


def fold_heads(t: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D]`` -> ``[B * H * N, 1, D]`` (slot ``(b * H + h) * N + n``)."""
    B, N, H, D = t.shape
    return t.permute(0, 2, 1, 3).reshape(B * H * N, 1, D)


def slot_offsets(B: int, H: int, N: int, device) -> torch.Tensor:
    """First slot of each (sample, head): int64 ``[B, H]``."""
    return torch.arange(B * H, device=device).view(B, H) * N


def add_lonely_self_loops(key: torch.Tensor, query: torch.Tensor, num_slots: int):
    """Append the self-loop of every slot that is the query of no edge (so no row is empty)."""
    has_key = torch.zeros(num_slots, dtype=torch.bool, device=query.device)
    has_key[query] = True
    lonely = torch.nonzero(~has_key).flatten()
    return torch.cat([key, lonely]), torch.cat([query, lonely])


def _rank(order: torch.Tensor) -> torch.Tensor:
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def routed_attention(q, k, v, key_slot, query_slot, *, q_order=None, k_order=None, scale=None,
                     dropout_p: float = 0.0, unique: bool = False) -> torch.Tensor:
    """Softmax attention of ``q``, ``k``, ``v`` ``[B, N, H, D]`` over the slot edges
    ``(key_slot, query_slot)``; returns ``[B, N, H, Dv]``.

    ``q_order`` / ``k_order`` (permutations of the ``B * H * N`` slots) give the row order of the
    engine call (position ``p`` holds slot ``order[p]``); None is slot order. Edges must be unique
    unless ``unique=True``, which de-duplicates them (one sort, which also hands the engine its
    edges sorted by (query, key)).
    """
    B, N, H, Dv = v.shape
    qf, kf, vf = fold_heads(q), fold_heads(k), fold_heads(v)
    q_rank = None if q_order is None else _rank(q_order)
    k_rank = None if k_order is None else _rank(k_order)
    if q_rank is not None:
        qf, query_slot = qf[q_order], q_rank[query_slot]
    if k_rank is not None:
        kf, vf, key_slot = kf[k_order], vf[k_order], k_rank[key_slot]
    S = B * H * N
    code = torch.unique(query_slot * S + key_slot) if unique else torch.sort(query_slot * S + key_slot).values
    edge_index = torch.stack([code % S, code // S])
    if unique:  # unique, in range, sorted by (query, key) by construction: skip the engine's checks
        _trust_edge_index(edge_index, S, S)
    out = graph_attention(qf, kf, vf, edge_index, scale=scale, dropout_p=dropout_p)  # [S, 1, Dv]
    if q_rank is not None:
        out = out[q_rank]
    return out.view(B, H, N, Dv).permute(0, 2, 1, 3)


def per_head_graphs(key_slot, query_slot, B: int, H: int, N: int, label: EdgeLabel) -> list[AttentionGraph]:
    """The per-head layout (``compose.stack_heads``) of every sample, in token coordinates."""
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


def routed_output(out_proj, out: torch.Tensor, key_slot, query_slot, batched: bool, return_graph: bool,
                  label: EdgeLabel):
    """A content-based layer's result: ``out_proj`` of ``out [B, N, H, D]`` (unbatched input:
    no batch dim), with the per-head graphs of every sample when ``return_graph``."""
    B, N, H, D = out.shape
    out = out_proj(out.reshape(B, N, H * D))
    if not batched:
        out = out[0]
    if not return_graph:
        return out
    graphs = per_head_graphs(key_slot, query_slot, B, H, N, label)
    return out, (graphs if batched else graphs[0])
