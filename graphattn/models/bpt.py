"""BP-Transformer text classifier (Ye, Guo, Gan, Qiu and Zhang, 2019, "BP-Transformer:
Modelling Long-Range Context via Binary Partitioning")."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from graphattn import rules
from graphattn._validate import check_bool, check_int
from graphattn.graph import EdgeLabel
from graphattn.models._ragged import LengthCache, batched_graph, classifier_args, ragged_input
from graphattn.models.encoder import GraphRule, SparseEncoderLayer
from graphattn.models.star import embed_std
from graphattn.rules.bpt import bpt_levels

__all__ = ["BPTransformerClassifier"]


class _WithLevels:
    """``post`` for :func:`batched_graph`: the graph, each node's tree level and the offsets.
    A span node's level is read off its affiliated edges' relative id ``(2k+1) * level``."""

    def __init__(self, width: int):
        self.width = width

    def __call__(self, g, ptr):
        key, query = g.edge_index
        aff = g.edge_label == int(EdgeLabel.AFFILIATED)
        level = torch.zeros(g.num_nodes, dtype=torch.int64, device=g.device)
        level[query[aff]] = g.relative[aff] // self.width
        return g, level, ptr


class BPTransformerClassifier(nn.Module):
    r"""BP-Transformer classifier: graph self-attention over the tokens and the span nodes of
    :func:`graphattn.rules.bp_transformer` (binary partition tree, contextual edges ``k`` per
    side and level), classification from the root span node.

    Inputs: token ``i`` starts as ``\mathrm{Emb}(w_i) + P_i + L_0`` (learned positions, unless
    ``positions=False``); a span node at level ``l`` starts as the mean of the token inputs
    ``\mathrm{Emb}(w_i) + P_i`` it covers plus a learned level embedding ``L_l`` (the mean gives
    every span its content from the first layer on, the level tells spans apart). Each of the
    ``num_layers`` pre-norm layers (:class:`~graphattn.models.SparseEncoderLayer`: attention +
    FFN) updates every node:

    .. math::
        x'_u = x_u + \mathrm{Attn}\big(\mathrm{LN}(x)_u;\ \{\mathrm{LN}(x)_v : (v, u) \in E\}\big),
        \qquad y_u = x'_u + \mathrm{FFN}(\mathrm{LN}(x'_u))

    with a learned per-head score bias for each edge's relative id ``g.relative``
    (``(2k + 1) * level + slot``: side, distance and level of the key; ``num_relative =
    (2k + 1) * len(bpt_levels(max_len))``), the per-head scalar form of BPT's relative
    position representations. Logits: an MLP on the final (LayerNorm-ed) root node, which
    attends every token through its affiliated edges.

    **Padding.** As :class:`StarTransformerClassifier`: the positions where ``attention_mask``
    is false (without a mask, the ``padding_idx`` entries) are removed and each sample gets the
    graph of its true length, span nodes included, in one union.

    Args:
        vocab_size, embed_dim, num_heads, num_layers, num_classes: sizes.
        k: contextual keys per side and level.
        padding_idx, max_len, dropout: as in :class:`StarTransformerClassifier`.
        ff_dim: FFN width (default ``4 * embed_dim``).
        positions: add learned absolute position embeddings to the tokens.

    Shapes:
        - **tokens**: int ``[B, n]``; **attention_mask** (optional) ``[B, n]`` -> **logits**
          ``[B, num_classes]``

    >>> model = BPTransformerClassifier(10, 8, 2, 2, 3, k=1)
    >>> model(torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 1, 2]])).shape
    torch.Size([2, 3])
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, num_classes: int,
                 k: int, *, padding_idx: int | None = 0, max_len: int = 512, ff_dim: int | None = None,
                 dropout: float = 0.0, positions: bool = True):
        super().__init__()
        (self.vocab_size, self.embed_dim, self.num_heads, self.num_layers, self.num_classes, self.padding_idx,
         self.max_len, self.dropout) = classifier_args(vocab_size, embed_dim, num_heads, num_layers, num_classes,
                                                       padding_idx, max_len, dropout)
        self.k = check_int("k", k, minimum=1)
        self.positions = check_bool("positions", positions)
        num_levels = len(bpt_levels(self.max_len))
        self.num_relative = (2 * self.k + 1) * num_levels
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=self.padding_idx)
        self.position_embedding = nn.Embedding(max_len, embed_dim) if self.positions else None
        self.level_embedding = nn.Embedding(num_levels, embed_dim)
        self.layers = nn.ModuleList(
            SparseEncoderLayer(embed_dim, num_heads, ff_dim=ff_dim, dropout=dropout, num_relative=self.num_relative)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Dropout(self.dropout),
                                        nn.Linear(embed_dim, num_classes))
        self._graphs = LengthCache(GraphRule(rules.bp_transformer, k=self.k))
        self._post = _WithLevels(2 * self.k + 1)
        self._batches: OrderedDict = OrderedDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = embed_std(self.embed_dim)
        nn.init.normal_(self.token_embedding.weight, std=std)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.token_embedding.weight[self.padding_idx].zero_()
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=std)
        nn.init.normal_(self.level_embedding.weight, std=std)
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        r = ragged_input(tokens, self.vocab_size, self.padding_idx, self.max_len, attention_mask)
        g, level, node_ptr = batched_graph(self._graphs, r.lengths, tokens.device, self._batches, self._post)
        e = self.token_embedding(r.ids)
        if self.position_embedding is not None:
            e = e + self.position_embedding(r.position)
        tok = node_ptr[:-1][r.sample] + r.position  # node id of each real token
        x = torch.zeros(g.num_nodes, self.embed_dim, dtype=e.dtype, device=e.device).index_copy(0, tok, e)
        # Span inputs: mean of the covered token inputs (affiliated edges: key token -> query span).
        key, query = g.edge_index
        aff = g.edge_label == int(EdgeLabel.AFFILIATED)
        sums = torch.zeros_like(x).index_add(0, query[aff], x[key[aff]])
        counts = torch.bincount(query[aff], minlength=g.num_nodes).clamp_min(1).to(x.dtype)
        is_span = level > 0
        x = torch.where(is_span[:, None], sums / counts[:, None], x) + self.level_embedding(level)
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, g)
        root = node_ptr[1:] - 1  # the root is each sample's last node (the token itself when n = 1)
        return self.classifier(self.norm(x[root]))
