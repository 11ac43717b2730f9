"""Multi-head attention layer over an attention graph."""

from __future__ import annotations

import torch
from torch import nn

from graphattn._validate import check_features, check_float, check_heads, check_int, renamed_parameters
from graphattn.graph import AttentionGraph
from graphattn.nn.functional import graph_attention

__all__ = ["GraphAttention", "fold_batch", "unfold_batch", "reset_projections"]


def reset_projections(*linears: nn.Linear) -> None:
    """Xavier-uniform weights, zero biases: the attention layers' projections."""
    for lin in linears:
        nn.init.xavier_uniform_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)


def fold_batch(t: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D] -> [N, B * H, D]``: a batch sharing one graph runs as ``B * H`` heads."""
    B, N, H, D = t.shape
    return t.permute(1, 0, 2, 3).reshape(N, B * H, D)


def unfold_batch(result, B: int):
    """Inverse of :func:`fold_batch` on ``(out [N, B * H, D], weights [E, B * H] or None)``."""
    out, weights = result
    N, BH, D = out.shape
    out = out.view(N, B, BH // B, D).permute(1, 0, 2, 3)
    if weights is not None:
        weights = weights.view(-1, B, BH // B).permute(1, 0, 2)
    return out, weights


class GraphAttention(nn.Module):
    r"""Multi-head softmax attention whose query-key pairs are the edges of an attention graph.

    .. math::
        \mathbf{x}'_i = W_o \Big\Vert_{h=1}^{H} \sum_{j:(j,i)\in E}
        \alpha_{ij,h} W_v^h \mathbf{x}_j, \qquad
        \alpha_{ij,h} = \operatorname{softmax}_{j}\Big(\frac{(W_q^h \mathbf{x}_i)^\top
        W_k^h \mathbf{x}_j}{\sqrt{d}} + b^h_{r(j,i)} + \beta_{(j,i),h}\Big)

    with ``b`` a learned per-head bias of the graph's relative-position id ``r(j, i)`` (when the
    layer has ``num_relative`` and the graph carries ``relative``, e.g. :func:`rules.etc`) and
    ``beta`` an optional per-call ``edge_bias``. A per-head layout (``graph.head_mask``, or
    ``head_mask`` with an edge_index) restricts head ``h`` to its own edges. Laid out like a PyG
    conv: it also runs as ``forward(x, edge_index)`` inside ``torch_geometric.nn.Sequential``;
    an edge_index may repeat edges (each copy is one more message, as in PyG's
    ``TransformerConv``).

    Args:
        embed_dim: model width ``E`` (= ``num_heads * head_dim``).
        num_heads: attention heads ``H``.
        dropout: dropout on the attention probabilities (training only).
        bias: whether the q/k/v/out projections have biases.
        kdim, vdim: key / value input widths for cross-attention (default ``embed_dim``).
        num_relative: size of the relative-position vocabulary (``2k + 2`` for ``rules.etc``).

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]`` (one graph shared across the batch)
        - **graph**: AttentionGraph over ``N`` nodes, or ``edge_index [2, num_edges]``
        - **x_kv** (optional): ``[Nk, kdim]`` or ``[B, Nk, kdim]``; keys/values come from it
        - **edge_bias** (optional): ``[num_edges, H]``
        - **head_mask** (optional, with an edge_index): bool ``[num_edges, H]``
        - **output**: like ``x``; with ``return_attention_weights=True`` also the weights
          ``[num_edges, H]`` (``[B, num_edges, H]`` for batched input)
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, num_relative: int | None = None):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = check_heads(embed_dim, num_heads)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self.kdim = embed_dim if kdim is None else check_int("kdim", kdim, minimum=1)
        self.vdim = embed_dim if vdim is None else check_int("vdim", vdim, minimum=1)
        self.num_relative = None if num_relative is None else check_int("num_relative", num_relative, minimum=1)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.relative_bias = nn.Embedding(self.num_relative, num_heads) if self.num_relative else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_projections(self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if self.relative_bias is not None:
            nn.init.zeros_(self.relative_bias.weight)

    def _edge_bias(self, graph, edge_bias, num_edges: int):
        bias = None
        if self.relative_bias is not None and isinstance(graph, AttentionGraph) and graph.relative is not None:
            rel = graph.relative
            if rel.numel() and int(rel.max()) >= self.num_relative:
                raise ValueError(f"expected graph.relative ids < num_relative = {self.num_relative}, "
                                 f"got {int(rel.max())}")
            # index_select rather than the module call: the same values, but its backward is an
            # index_add (24 ms for 3M edges) where embedding's dense backward sorts (157 ms).
            bias = self.relative_bias.weight.index_select(0, rel)
        if edge_bias is not None:
            if edge_bias.shape != (num_edges, self.num_heads):
                raise ValueError(f"expected edge_bias of shape [{num_edges}, {self.num_heads}], "
                                 f"got {list(edge_bias.shape)}")
            bias = edge_bias if bias is None else bias + edge_bias
        return bias

    @renamed_parameters(return_attention="return_attention_weights")
    def forward(self, x: torch.Tensor, graph, *, x_kv: torch.Tensor | None = None,
                edge_bias: torch.Tensor | None = None, head_mask: torch.Tensor | None = None,
                return_attention_weights: bool = False):
        x, batched = check_features(x, self.embed_dim)
        kv = x if x_kv is None else x_kv
        if x_kv is not None:
            kv, kv_batched = check_features(x_kv, self.kdim, name="x_kv", width_name="kdim")
            if kv_batched != batched or kv.shape[0] != x.shape[0]:
                raise ValueError(f"expected x_kv with the batch layout of x, got {list(x_kv.shape)} and "
                                 f"{list(x.shape) if batched else list(x.shape[1:])}")
        B = x.shape[0]
        N, Nk, H, D = x.shape[-2], kv.shape[-2], self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, D)
        k = self.k_proj(kv).view(B, Nk, H, D)
        v = self.v_proj(kv).view(B, Nk, H, D)
        num_edges = graph.num_edges if isinstance(graph, AttentionGraph) else graph.shape[-1]
        bias = self._edge_bias(graph, edge_bias, num_edges)
        dropout = self.dropout if self.training else 0.0
        per_head = isinstance(graph, AttentionGraph) and graph.num_heads is not None
        if B == 1 or per_head:
            results = [graph_attention(q[b], k[b], v[b], graph, bias=bias, head_mask=head_mask, dropout_p=dropout,
                                       return_attention_weights=return_attention_weights) for b in range(B)]
            outs = [r[0] if return_attention_weights else r for r in results]
            out = torch.stack(outs)
            weights = torch.stack([r[1] for r in results]) if return_attention_weights else None
        else:
            # One graph shared by the batch: fold the batch into the heads (one plan, one call).
            fb = None if bias is None else bias.repeat(1, B)
            fh = None if head_mask is None else head_mask.repeat(1, B)
            res = graph_attention(fold_batch(q), fold_batch(k), fold_batch(v), graph, bias=fb, head_mask=fh,
                                  dropout_p=dropout, return_attention_weights=return_attention_weights)
            out, weights = unfold_batch(res if return_attention_weights else (res, None), B)
        return self._output(out, weights, batched, return_attention_weights)

    def _output(self, out, weights, batched: bool, return_attention_weights: bool):
        """Project ``out [B, N, H, D]``; drop the batch dim of unbatched input."""
        B, N = out.shape[:2]
        out = self.out_proj(out.reshape(B, N, self.embed_dim))
        if not batched:
            out = out[0]
            weights = None if weights is None else weights[0]
        return (out, weights) if return_attention_weights else out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.embed_dim}, num_heads={self.num_heads}, "
                f"dropout={self.dropout}, num_relative={self.num_relative})")
