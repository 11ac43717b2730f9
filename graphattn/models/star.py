"""Star-Transformer text classifier (Guo, Qiu, Liu, Shao, Xue and Zhang, NAACL 2019)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from graphattn import rules
from graphattn._validate import check_bool
from graphattn.graph import EdgeLabel
from graphattn.models._ragged import LengthCache, batched_graph, classifier_args, ragged_input
from graphattn.models.encoder import GraphRule
from graphattn.nn.attention import GraphAttention

__all__ = ["StarTransformerClassifier"]


def _phases(g, ptr):
    return g.select_labels(EdgeLabel.RING), g.select_labels(EdgeLabel.RADICAL), ptr


class StarTransformerClassifier(nn.Module):
    r"""Star-Transformer classifier: ``num_layers`` Star updates over the graph of
    :func:`graphattn.rules.star_transformer`, then an MLP on the relay node.

    Node states are laid out as the rule numbers them, per sample: satellites ``h_0..h_{n-1}``
    (the tokens), embedding nodes ``e_0..e_{n-1}`` (fixed inputs), relay ``s``. With
    ``e_i = \mathrm{Emb}(w_i) + P_i`` (learned token and position embeddings),
    ``h^0_i = e_i`` and ``s^0 = \mathrm{mean}_i\, e_i`` (the paper's initialisation), layer
    ``t`` runs

    .. math::
        h^t_i &= \mathrm{LN}\big(\mathrm{ReLU}(\mathrm{Attn}^t_{ring}(h^{t-1}_i;\,
                 [h^{t-1}_{i-1}, h^{t-1}_i, h^{t-1}_{i+1}, e_i, s^{t-1}]))\big)
                 \quad \text{(ring phase)} \\
        s^t &= \mathrm{LN}\big(\mathrm{ReLU}(\mathrm{Attn}^t_{radical}(s^{t-1};\,
               [s^{t-1}, h^t_1, \dots, h^t_n]))\big) \quad \text{(radical phase)}

    Each phase is one :class:`~graphattn.nn.GraphAttention` over the graph's RING (resp.
    RADICAL) edges: ``g.select_labels(EdgeLabel.RING)``; the radical phase sees the updated
    satellites. The ring closes (``cyclic=True``, satellites ``0`` and ``n-1`` are neighbours)
    unless ``cyclic=False``. The document representation is the final relay state ``s^T``
    (plus the max-pooled satellites when ``max_pool=True``, fastNLP's classifier); logits come
    from a two-layer MLP.

    **Padding.** Entries where ``attention_mask`` is false (bool or 0/1, ``[B, n]``), or without
    a mask the entries equal to ``padding_idx`` (anywhere in a row), are removed: each sample's
    graph (satellites, embedding nodes and its own relay) is built for its true length and the
    batch is their disjoint union (:func:`graphattn.compose.batch`), one engine call per phase,
    so a padded sample gives the logits of the unpadded one. Positions count the kept tokens.

    Args:
        vocab_size, embed_dim, num_heads, num_layers, num_classes: sizes.
        padding_idx: the padding id (None: no padding).
        max_len: number of learned positions.
        dropout: on the embeddings, the attention weights and the phase outputs.
        cyclic: close the ring.
        max_pool: add the max-pooled satellites to the relay state before the classifier.

    Shapes:
        - **tokens**: int ``[B, n]``; **attention_mask** (optional) ``[B, n]`` -> **logits**
          ``[B, num_classes]``

    >>> model = StarTransformerClassifier(10, 8, 2, 2, 3)
    >>> model(torch.tensor([[4, 5, 6, 0], [7, 8, 9, 1]])).shape
    torch.Size([2, 3])
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, num_classes: int, *,
                 padding_idx: int | None = 0, max_len: int = 512, dropout: float = 0.0, cyclic: bool = True,
                 max_pool: bool = False):
        super().__init__()
        (self.vocab_size, self.embed_dim, self.num_heads, self.num_layers, self.num_classes, self.padding_idx,
         self.max_len, self.dropout) = classifier_args(vocab_size, embed_dim, num_heads, num_layers, num_classes,
                                                       padding_idx, max_len, dropout)
        self.cyclic = check_bool("cyclic", cyclic)
        self.max_pool = check_bool("max_pool", max_pool)
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=self.padding_idx)
        self.position_embedding = nn.Embedding(max_len, embed_dim)
        self.ring_attn = nn.ModuleList(GraphAttention(embed_dim, num_heads, dropout=dropout)
                                       for _ in range(num_layers))
        self.radical_attn = nn.ModuleList(GraphAttention(embed_dim, num_heads, dropout=dropout)
                                          for _ in range(num_layers))
        self.ring_norm = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(num_layers))
        self.radical_norm = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(num_layers))
        self.drop = nn.Dropout(self.dropout)
        self.classifier = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Dropout(self.dropout),
                                        nn.Linear(embed_dim, num_classes))
        self._graphs = LengthCache(GraphRule(rules.star_transformer, cyclic=self.cyclic))
        self._batches: OrderedDict = OrderedDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=embed_std(self.embed_dim))
        if self.padding_idx is not None:
            with torch.no_grad():
                self.token_embedding.weight[self.padding_idx].zero_()
        nn.init.normal_(self.position_embedding.weight, std=embed_std(self.embed_dim))
        for m in [*self.ring_attn, *self.radical_attn, *self.ring_norm, *self.radical_norm]:
            m.reset_parameters()
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        r = ragged_input(tokens, self.vocab_size, self.padding_idx, self.max_len, attention_mask)
        B, E = tokens.shape[0], self.embed_dim
        e = self.drop(self.token_embedding(r.ids) + self.position_embedding(r.position))  # [T, E]
        ring, radical, node_ptr = batched_graph(self._graphs, r.lengths, tokens.device, self._batches, _phases)
        # Node ids of the rule's per-sample layout [satellites; embeddings; relay], offset by the batch.
        sat = node_ptr[:-1][r.sample] + r.position
        emb = sat + r.lengths[r.sample]
        relay = node_ptr[:-1] + 2 * r.lengths
        counts = r.lengths.to(e.dtype)[:, None]
        s = torch.zeros(B, E, dtype=e.dtype, device=e.device).index_add(0, r.sample, e) / counts
        x = torch.zeros(ring.num_nodes, E, dtype=e.dtype, device=e.device)
        x = x.index_copy(0, sat, e).index_copy(0, emb, e).index_copy(0, relay, s)
        h = e
        for t in range(self.num_layers):
            h = self.ring_norm[t](torch.relu(self.drop(self.ring_attn[t](x, ring)[sat])))
            x = x.index_copy(0, sat, h)
            s = self.radical_norm[t](torch.relu(self.drop(self.radical_attn[t](x, radical)[relay])))
            x = x.index_copy(0, relay, s)
        rep = s
        if self.max_pool:
            pooled = torch.full((B, E), float("-inf"), dtype=h.dtype, device=h.device)
            rep = rep + pooled.scatter_reduce(0, r.sample[:, None].expand_as(h), h, "amax")
        return self.classifier(rep)


def embed_std(embed_dim: int) -> float:
    """Embedding init scale ``1 / sqrt(E)``: unit-norm rows on average."""
    return embed_dim ** -0.5
