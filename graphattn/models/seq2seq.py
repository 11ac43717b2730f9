"""Encoder-decoder with a sparse encoder: BigBird's sequence-to-sequence setup (Zaheer et al.,
2020, Sec. 4: sparse attention in the encoder, full attention in the decoder)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from graphattn import rules
from graphattn._validate import check_float, check_int
from graphattn.models._ragged import check_tokens
from graphattn.models.encoder import FeedForward, SparseEncoder
from graphattn.models.star import embed_std
from graphattn.nn.attention import GraphAttention

__all__ = ["DecoderLayer", "EncoderDecoder", "cross_edge_index"]


def cross_edge_index(num_keys: int, num_queries: int, device=None) -> torch.Tensor:
    """The complete bipartite edge set from ``num_keys`` encoder nodes to ``num_queries``
    decoder queries: ``[2, num_keys * num_queries]``, row 0 the key (encoder position), row 1
    the query (decoder position), sorted by (query, key) as the engine expects.

    >>> cross_edge_index(2, 2).tolist()
    [[0, 1, 0, 1], [0, 0, 1, 1]]
    """
    num_keys = check_int("num_keys", num_keys, minimum=0)
    num_queries = check_int("num_queries", num_queries, minimum=0)
    key = torch.arange(num_keys, device=device).repeat(num_queries)
    query = torch.arange(num_queries, device=device).repeat_interleave(num_keys)
    return torch.stack([key, query])


class DecoderLayer(nn.Module):
    r"""Pre-norm transformer decoder layer, every attention a graph:

    .. math::
        y &= x + \mathrm{Attn}_{self}(\mathrm{LN}_1(x), G_{causal}) \\
        y &\mathrel{+}= \mathrm{Attn}_{cross}(\mathrm{LN}_2(y), E_{cross}; \text{keys from } m) \\
        y &\mathrel{+}= \mathrm{FFN}(\mathrm{LN}_3(y))

    with ``G_causal = rules.full(T).causal()`` (query ``t`` attends ``0..t``) and ``E_cross``
    the complete bipartite edge set from the ``n`` memory nodes ``m`` to the ``T`` queries
    (:func:`cross_edge_index`), both run by the graph-attention engine.

    Shapes:
        - **x**: ``[T, E]`` or ``[B, T, E]``; **memory** ``[n, E]`` or ``[B, n, E]``
        - **output**: like ``x``
    """

    def __init__(self, embed_dim: int, num_heads: int, *, ff_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self.self_attn = GraphAttention(embed_dim, num_heads, dropout=dropout)
        self.cross_attn = GraphAttention(embed_dim, num_heads, dropout=dropout)
        self.ff = FeedForward(embed_dim, ff_dim, dropout=dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(embed_dim) for _ in range(3))
        self.drop = nn.Dropout(self.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.self_attn, self.cross_attn, self.ff, self.norm1, self.norm2, self.norm3):
            m.reset_parameters()

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_graph, cross_edges: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), self_graph))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_edges, x_kv=memory))
        return x + self.drop(self.ff(self.norm3(x)))


class EncoderDecoder(nn.Module):
    r"""BigBird's encoder-decoder: a :class:`~graphattn.models.SparseEncoder` over
    ``encoder_graph(n)`` and a decoder of :class:`DecoderLayer` (full causal self-attention and
    full cross-attention, both expressed as graphs), then a projection to the vocabulary.

    One vocabulary for source and target (as BigBird's summarisation models). Inputs are token
    plus learned position embeddings; the output projection shares its weight with
    :attr:`decoder_embedding` (``tie_embeddings=True``, the usual tying).

    * :meth:`encode` ``(src [B, n]) -> memory [B, n, E]``
    * :meth:`decode` ``(tgt_embeddings [B, T, E], memory) -> logits [B, T, vocab]``, where
      ``tgt_embeddings = model.decoder_embedding(tgt)`` (positions are added inside)
    * ``forward(src, tgt) = decode(decoder_embedding(tgt), encode(src))``

    Logits at step ``t`` depend on ``tgt[:, :t+1]`` only (teacher forcing: feed the target
    shifted right). Padding is not masked: pad tokens are ordinary tokens.

    Args:
        vocab_size, embed_dim, num_heads: sizes.
        num_layers: encoder depth (and decoder depth unless ``decoder_layers`` is given).
        encoder_graph: callable ``n -> AttentionGraph`` (e.g. ``GraphRule(rules.bigbird,
            block_size=64, seed=0)``), or a per-layer list of them; see :class:`SparseEncoder`.
        decoder_layers, ff_dim, dropout: decoder depth, FFN width, dropout.
        max_len: learned positions (source and target each).
        num_global: learned global nodes of the encoder (BigBird-ETC / ETC graphs).
        num_relative: relative-position vocabulary of the encoder (ETC graphs).
        tie_embeddings: share the output projection with ``decoder_embedding``.

    Shapes:
        - **src**: int ``[B, n]``, **tgt**: int ``[B, T]`` -> **logits** ``[B, T, vocab_size]``

    >>> from graphattn.models import GraphRule
    >>> model = EncoderDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=2))
    >>> model(torch.randint(0, 20, (2, 12)), torch.randint(0, 20, (2, 5))).shape
    torch.Size([2, 5, 20])
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, encoder_graph, *,
                 decoder_layers: int | None = None, ff_dim: int | None = None, dropout: float = 0.0,
                 max_len: int = 4096, num_global: int = 0, num_relative: int | None = None,
                 tie_embeddings: bool = True):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.max_len = check_int("max_len", max_len, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        decoder_layers = num_layers if decoder_layers is None else check_int("decoder_layers", decoder_layers,
                                                                             minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self.encoder_embedding = nn.Embedding(vocab_size, embed_dim)
        self.decoder_embedding = nn.Embedding(vocab_size, embed_dim)
        self.encoder_positions = nn.Embedding(max_len, embed_dim)
        self.decoder_positions = nn.Embedding(max_len, embed_dim)
        self.encoder = SparseEncoder(embed_dim, num_heads, graphs=encoder_graph,
                                     num_layers=num_layers,
                                     ff_dim=ff_dim, dropout=dropout, num_global=num_global,
                                     num_relative=num_relative)
        self.decoder = nn.ModuleList(DecoderLayer(embed_dim, num_heads, ff_dim=ff_dim, dropout=dropout)
                                     for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.output = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.decoder_embedding.weight
        self.drop = nn.Dropout(self.dropout)
        self._self_graphs: OrderedDict = OrderedDict()
        self._cross: OrderedDict = OrderedDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = embed_std(self.embed_dim)
        for emb in (self.encoder_embedding, self.decoder_embedding, self.encoder_positions, self.decoder_positions):
            nn.init.normal_(emb.weight, std=std)
        if self.output.weight is not self.decoder_embedding.weight:
            nn.init.normal_(self.output.weight, std=std)
        self.encoder.reset_parameters()
        for layer in self.decoder:
            layer.reset_parameters()
        self.decoder_norm.reset_parameters()

    def _positions(self, emb: nn.Embedding, n: int, device) -> torch.Tensor:
        if n > self.max_len:
            raise ValueError(f"expected sequences of at most max_len = {self.max_len} tokens, got {n}")
        return emb(torch.arange(n, device=device))

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """Encoder states ``[B, n, E]`` of source tokens ``[B, n]``."""
        src = check_tokens(src, self.vocab_size, "src")
        x = self.encoder_embedding(src) + self._positions(self.encoder_positions, src.shape[1], src.device)
        return self.encoder(self.drop(x))

    @staticmethod
    def _lru(cache: OrderedDict, key, make, size: int = 16):
        value = cache.get(key)
        if value is None:
            value = cache[key] = make()
            if len(cache) > size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return value

    def decode(self, tgt_embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` from target token embeddings ``[B, T, E]`` (the output of
        :attr:`decoder_embedding`; positions are added here) and encoder states ``[B, n, E]``.
        Unbatched ``[T, E]`` / ``[n, E]`` work too."""
        for name, t in (("tgt_embeddings", tgt_embeddings), ("memory", memory)):
            if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3) or t.shape[-1] != self.embed_dim:
                raise ValueError(f"expected {name} of shape [B, L, {self.embed_dim}] or [L, {self.embed_dim}], got "
                                 f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if tgt_embeddings.dim() != memory.dim() or (memory.dim() == 3 and memory.shape[0] != tgt_embeddings.shape[0]):
            raise ValueError(f"expected tgt_embeddings and memory with one batch layout, got "
                             f"{list(tgt_embeddings.shape)} and {list(memory.shape)}")
        T, n, device = tgt_embeddings.shape[-2], memory.shape[-2], tgt_embeddings.device
        x = self.drop(tgt_embeddings + self._positions(self.decoder_positions, T, device))
        self_graph = self._lru(self._self_graphs, (T, str(device)), lambda: rules.full(T).causal().to(device))
        cross = self._lru(self._cross, (n, T, str(device)), lambda: cross_edge_index(n, T, device))
        for layer in self.decoder:
            x = layer(x, memory, self_graph, cross)
        return self.output(self.decoder_norm(x))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        tgt = check_tokens(tgt, self.vocab_size, "tgt")
        return self.decode(self.decoder_embedding(tgt), self.encode(src))
