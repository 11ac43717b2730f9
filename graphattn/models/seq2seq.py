"""Encoder-decoder with a sparse encoder: BigBird's sequence-to-sequence setup (Zaheer et al.,
2020, Sec. 4: sparse attention in the encoder, full attention in the decoder), with padded
batches, incremental decoding from a cache, and greedy / beam generation."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from graphattn import rules
from graphattn._validate import check_features, check_float, check_int
from graphattn.models._ragged import batched_graph, check_mask, check_tokens, lru_get, ragged_mask
from graphattn.models.decoding import (CausalRule, DecoderCache, cached_self_attention, project_heads,
                                       row_attention, search)
from graphattn.models.encoder import FeedForward, SinusoidalPositions, SparseEncoder
from graphattn.models.star import embed_std
from graphattn.nn.attention import GraphAttention
from graphattn.rules._build import ranges

__all__ = ["DecoderLayer", "EncoderDecoder", "cross_edge_index", "ragged_cross_edge_index"]

_CACHE_SIZE = 16  # graphs kept per model: one per (lengths, device)


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


def ragged_cross_edge_index(num_keys: torch.Tensor, num_queries: torch.Tensor, device=None) -> torch.Tensor:
    """Cross-attention edges of a ragged batch: the disjoint union over samples ``b`` of the
    complete bipartite graph from sample ``b``'s ``num_keys[b]`` encoder nodes to its
    ``num_queries[b]`` decoder queries, both numbered sample-major (the flattened layout of a
    padded batch); ``[2, sum_b num_keys[b] * num_queries[b]]``, sorted by (query, key).

    >>> ragged_cross_edge_index(torch.tensor([2, 1]), torch.tensor([1, 2])).tolist()
    [[0, 1, 2, 2], [0, 0, 1, 2]]
    """
    nk, nq = num_keys.long().cpu(), num_queries.long().cpu()
    k_ptr = torch.cumsum(nk, 0) - nk
    sample = torch.repeat_interleave(torch.arange(nq.numel()), nq)  # sample of each query
    per_query = nk[sample]
    query = torch.repeat_interleave(torch.arange(sample.numel()), per_query)
    key = ranges(k_ptr[sample], per_query)
    return torch.stack([key, query]).to(device)


class DecoderLayer(nn.Module):
    r"""Pre-norm transformer decoder layer, every attention a graph:

    .. math::
        y &= x + \mathrm{Attn}_{self}(\mathrm{LN}_1(x), G_{causal}) \\
        y &\mathrel{+}= \mathrm{Attn}_{cross}(\mathrm{LN}_2(y), E_{cross}; \text{keys from } m) \\
        y &\mathrel{+}= \mathrm{FFN}(\mathrm{LN}_3(y))

    with ``G_causal`` a causal graph over the ``T`` queries (``rules.full(T).causal()``: query
    ``t`` attends ``0..t``; or a sparse causal graph) and ``E_cross`` the complete bipartite
    edge set from the ``n`` memory nodes ``m`` to the ``T`` queries (:func:`cross_edge_index`),
    both run by the graph-attention engine. :meth:`step` computes one new position per sample
    from a :class:`~graphattn.models.DecoderCache` instead.

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

    def cross_keys(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of ``memory [B, n, E]``: ``[B, n, H, D]`` each,
        computed once per source for decoding."""
        a = self.cross_attn
        return project_heads(a.k_proj, memory, self.num_heads), project_heads(a.v_proj, memory, self.num_heads)

    def step(self, x: torch.Tensor, cache: DecoderCache, layer: int, positions: torch.Tensor,
             index: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
        """One decoding step (no dropout): ``x [B, E]`` the layer inputs at ``positions [B]``.
        Stores this position's self-attention key and value in ``cache`` (layer ``layer``),
        attends the row's keys (``index``, ``valid`` ``[B, m]``, see
        :meth:`CausalRule.row_keys`) and the cached cross-attention keys; returns ``[B, E]``."""
        B, H = x.shape[0], self.num_heads
        ca = self.cross_attn
        x = x + cached_self_attention(self.self_attn, self.norm1(x), cache, layer, positions, index, valid)
        q = project_heads(ca.q_proj, self.norm2(x), H)
        out = row_attention(q[:, None], cache.cross_keys[layer], cache.cross_values[layer], cache.cross_mask[:, None])
        x = x + ca.out_proj(out.reshape(B, -1))
        return x + self.ff(self.norm3(x))


class EncoderDecoder(nn.Module):
    r"""BigBird's encoder-decoder: a :class:`~graphattn.models.SparseEncoder` over
    ``encoder_graph(n)`` and a decoder of :class:`DecoderLayer` (causal self-attention and full
    cross-attention, both expressed as graphs), then a projection to the vocabulary.

    One vocabulary for source and target (as BigBird's summarisation models). Inputs are token
    plus position embeddings (learned, or fixed :class:`~graphattn.models.SinusoidalPositions`
    with ``positions="sinusoidal"``); the output projection shares its weight with
    :attr:`decoder_embedding` (``tie_embeddings=True``, the usual tying).

    * :meth:`encode` ``(src [B, n], src_mask) -> memory [B, n, E]``
    * :meth:`decode` ``(tgt_embeddings [B, T, E], memory, tgt_mask=, memory_mask=) -> logits
      [B, T, vocab]``, where ``tgt_embeddings = model.decoder_embedding(tgt)`` (positions are
      added inside)
    * ``forward(src, tgt, src_mask=, tgt_mask=) = decode(decoder_embedding(tgt), encode(src))``
    * :meth:`generate` ``(src, src_mask, max_new_tokens, bos_id=, eos_id=, num_beams=)``:
      greedy or beam search from a :class:`~graphattn.models.DecoderCache`
      (:meth:`start_decoding`, :meth:`decode_step`).

    Logits at step ``t`` depend on ``tgt[:, :t+1]`` only (teacher forcing: feed the target
    shifted right).

    **Padded batches.** ``src_mask`` / ``tgt_mask`` ``[B, n]`` / ``[B, T]`` (bool or 0/1, true
    at real tokens, anywhere in a row): each sample runs at its own lengths, positions count
    its real tokens, the encoder runs over the union of the per-sample graphs, the decoder over
    the union of the per-sample causal graphs and the cross-attention over the union of the
    per-sample bipartite graphs (:func:`ragged_cross_edge_index`), each one engine call per
    layer and cached per (lengths, device). A padded position is never attended; its logits
    are zero. Without masks every position is a token.

    **Decoding.** :meth:`decode_step` computes one new position per sample: the self-attention
    row of :class:`~graphattn.models.CausalRule` ``decoder_graph`` at that position against the
    cached keys and values of the earlier positions, and the cross-attention against the
    encoder keys and values projected once per source. Steps equal the full forward
    (:meth:`decode`) position by position, and build no tiling plan.

    Args:
        vocab_size, embed_dim, num_heads: sizes.
        num_layers: encoder depth (and decoder depth unless ``decoder_layers`` is given).
        encoder_graph: callable ``n -> AttentionGraph`` (e.g. ``GraphRule(rules.bigbird,
            block_size=64, seed=0)``), or a per-layer list of them; see :class:`SparseEncoder`.
        decoder_layers, ff_dim, dropout: decoder depth, FFN width, dropout.
        max_len: positions (source and target each).
        num_global: learned global nodes of the encoder (BigBird-ETC / ETC graphs).
        num_relative: relative-position vocabulary of the encoder (ETC graphs).
        tie_embeddings: share the output projection with ``decoder_embedding``.
        decoder_graph: the decoder's causal self-attention graph, a
            :class:`~graphattn.models.CausalRule` (default ``CausalRule(rules.full)``: full
            causal attention).
        positions: ``"learned"`` (an embedding per position) or ``"sinusoidal"`` (fixed).

    Shapes:
        - **src**: int ``[B, n]``, **tgt**: int ``[B, T]`` -> **logits** ``[B, T, vocab_size]``
        - **src_mask**: ``[B, n]``, **tgt_mask**: ``[B, T]`` (optional)

    >>> from graphattn.models import GraphRule
    >>> model = EncoderDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=2))
    >>> model(torch.randint(0, 20, (2, 12)), torch.randint(0, 20, (2, 5))).shape
    torch.Size([2, 5, 20])
    >>> model.generate(torch.randint(0, 20, (2, 12)), max_new_tokens=4, bos_id=1, eos_id=2).shape[0]
    2
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, encoder_graph, *,
                 decoder_layers: int | None = None, ff_dim: int | None = None, dropout: float = 0.0,
                 max_len: int = 4096, num_global: int = 0, num_relative: int | None = None,
                 tie_embeddings: bool = True, decoder_graph: CausalRule | None = None,
                 positions: str = "learned"):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.max_len = check_int("max_len", max_len, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        decoder_layers = num_layers if decoder_layers is None else check_int("decoder_layers", decoder_layers,
                                                                             minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if decoder_graph is None:
            decoder_graph = CausalRule(rules.full)
        elif not isinstance(decoder_graph, CausalRule):
            raise TypeError(f"expected decoder_graph to be a CausalRule or None, got {type(decoder_graph).__name__}")
        self.decoder_graph = decoder_graph
        self.encoder_embedding = nn.Embedding(vocab_size, embed_dim)
        self.decoder_embedding = nn.Embedding(vocab_size, embed_dim)
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"expected positions in ('learned', 'sinusoidal'), got {positions!r}")
        self.positions = positions
        make = (lambda: nn.Embedding(max_len, embed_dim)) if positions == "learned" else (
            lambda: SinusoidalPositions(max_len, embed_dim))
        self.encoder_positions, self.decoder_positions = make(), make()
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
        self._self_graphs: OrderedDict = OrderedDict()  # (T, device) -> causal graph
        self._self_batches: OrderedDict = OrderedDict()  # (tgt lengths, device) -> union of causal graphs
        self._cross: OrderedDict = OrderedDict()  # lengths -> cross-attention edge_index
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = embed_std(self.embed_dim)
        for emb in (self.encoder_embedding, self.decoder_embedding, self.encoder_positions, self.decoder_positions):
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=std)
        if self.output.weight is not self.decoder_embedding.weight:
            nn.init.normal_(self.output.weight, std=std)
        self.encoder.reset_parameters()
        for layer in self.decoder:
            layer.reset_parameters()
        self.decoder_norm.reset_parameters()

    def _check_length(self, n: int) -> None:
        if n > self.max_len:
            raise ValueError(f"expected sequences of at most max_len = {self.max_len} tokens, got {n}")

    def _positions(self, emb: nn.Embedding, n: int, device) -> torch.Tensor:
        self._check_length(n)
        return emb(torch.arange(n, device=device))

    @staticmethod
    def _mask(mask, shape, name: str) -> torch.Tensor | None:
        """A checked mask, or None when absent or all true (the unpadded path is then exact)."""
        if mask is None:
            return None
        mask = check_mask(mask, shape, name)
        return None if bool(mask.all()) else mask

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder states ``[B, n, E]`` of source tokens ``[B, n]`` (zeros at padding)."""
        src = check_tokens(src, self.vocab_size, "src")
        mask = self._mask(src_mask, src.shape, "src_mask")
        if mask is None:
            x = self.encoder_embedding(src) + self._positions(self.encoder_positions, src.shape[1], src.device)
            return self.encoder(self.drop(x))
        r = ragged_mask(mask, "src_mask")
        self._check_length(int(r.lengths.max()))
        x = self.encoder_embedding(src) + self.encoder_positions(r.positions())
        return self.encoder(self.drop(x), attention_mask=mask)

    def _self_graph(self, T: int, device):
        return lru_get(self._self_graphs, (T, str(device)), lambda: self.decoder_graph(T).to(device), _CACHE_SIZE)

    def decode(self, tgt_embeddings: torch.Tensor, memory: torch.Tensor, *, tgt_mask: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` from target token embeddings ``[B, T, E]`` (the output of
        :attr:`decoder_embedding`; positions are added here) and encoder states ``[B, n, E]``,
        with optional ``tgt_mask [B, T]`` and ``memory_mask [B, n]`` (zero logits at padded
        targets). Unbatched ``[T, E]`` / ``[n, E]`` work too (without masks)."""
        check_features(tgt_embeddings, self.embed_dim, name="tgt_embeddings")
        check_features(memory, self.embed_dim, name="memory")
        if tgt_embeddings.dim() != memory.dim() or (memory.dim() == 3 and memory.shape[0] != tgt_embeddings.shape[0]):
            raise ValueError(f"expected tgt_embeddings and memory with one batch layout, got "
                             f"{list(tgt_embeddings.shape)} and {list(memory.shape)}")
        if tgt_embeddings.dim() == 2 and (tgt_mask is not None or memory_mask is not None):
            raise ValueError("expected batched tgt_embeddings [B, T, E] with tgt_mask / memory_mask, got unbatched")
        tmask = self._mask(tgt_mask, tgt_embeddings.shape[:-1], "tgt_mask")
        mmask = self._mask(memory_mask, memory.shape[:-1], "memory_mask")
        T, n, device = tgt_embeddings.shape[-2], memory.shape[-2], tgt_embeddings.device
        if tmask is None and mmask is None:
            x = self.drop(tgt_embeddings + self._positions(self.decoder_positions, T, device))
            self_graph = self._self_graph(T, device)
            cross = lru_get(self._cross, (n, T, str(device)), lambda: cross_edge_index(n, T, device), _CACHE_SIZE)
            for layer in self.decoder:
                x = layer(x, memory, self_graph, cross)
            return self.output(self.decoder_norm(x))
        B = tgt_embeddings.shape[0]
        rt = ragged_mask(torch.ones(B, T, dtype=torch.bool, device=device) if tmask is None else tmask, "tgt_mask")
        rm = ragged_mask(torch.ones(B, n, dtype=torch.bool, device=device) if mmask is None else mmask, "memory_mask")
        self._check_length(int(rt.lengths.max()))
        x = self.drop(tgt_embeddings[rt.keep] + self.decoder_positions(rt.position))
        self_graph = batched_graph(self.decoder_graph, rt.lengths, device, self._self_batches, size=_CACHE_SIZE)[0]
        key = ("ragged", tuple(rm.lengths.tolist()), tuple(rt.lengths.tolist()), str(device))
        cross = lru_get(self._cross, key, lambda: ragged_cross_edge_index(rm.lengths, rt.lengths, device), _CACHE_SIZE)
        mem = memory[rm.keep]
        for layer in self.decoder:
            x = layer(x, mem, self_graph, cross)
        return rt.scatter(self.output(self.decoder_norm(x)))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, *, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        tgt = check_tokens(tgt, self.vocab_size, "tgt")
        src = check_tokens(src, self.vocab_size, "src")
        return self.decode(self.decoder_embedding(tgt), self.encode(src, src_mask), tgt_mask=tgt_mask,
                           memory_mask=src_mask)

    # ------------------------------------------------------------------ incremental decoding
    def start_decoding(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None, *,
                       capacity: int) -> DecoderCache:
        """A :class:`~graphattn.models.DecoderCache` for decoding up to ``capacity`` target
        positions against ``memory [B, n, E]`` (``memory_mask [B, n]``): every decoder layer's
        cross-attention keys and values are computed here, once."""
        if not check_features(memory, self.embed_dim, name="memory")[1]:
            raise ValueError(f"expected memory of shape [B, n, {self.embed_dim}], got {list(memory.shape)}")
        capacity = check_int("capacity", capacity, minimum=1)
        self._check_length(capacity)
        B, n = memory.shape[:2]
        mask = torch.ones(B, n, dtype=torch.bool, device=memory.device)
        if memory_mask is not None:
            mask = check_mask(memory_mask, (B, n), "memory_mask")
        cache = DecoderCache.empty(len(self.decoder), B, capacity, self.num_heads, self.embed_dim // self.num_heads,
                                   dtype=memory.dtype, device=memory.device)
        kv = [layer.cross_keys(memory) for layer in self.decoder]
        cache.cross_keys, cache.cross_values = [k for k, _ in kv], [v for _, v in kv]
        cache.cross_mask = mask
        return cache

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Feed ``tokens [B]`` at the next position of every sample (``cache.lengths``); returns
        the logits of the following token ``[B, vocab]`` and advances the cache. Equals the
        full :meth:`decode` at that position (in evaluation mode; steps never apply dropout)."""
        tokens = check_tokens(tokens[:, None], self.vocab_size, "tokens")[:, 0]
        positions = cache.lengths
        if int(positions.max()) >= min(cache.capacity, self.max_len):
            raise ValueError(f"expected a free position in the cache (capacity {cache.capacity}, max_len "
                             f"{self.max_len}), got position {int(positions.max())}")
        x = self.decoder_embedding(tokens) + self.decoder_positions(positions)
        index, valid = self.decoder_graph.row_keys(positions)
        for l, layer in enumerate(self.decoder):
            x = layer.step(x, cache, l, positions, index, valid)
        cache.lengths = positions + 1
        return self.output(self.decoder_norm(x))

    @torch.no_grad()
    def generate(self, src: torch.Tensor, src_mask: torch.Tensor | None = None, max_new_tokens: int = 64, *,
                 bos_id: int, eos_id: int | None = None, num_beams: int = 1, length_penalty: float = 0.0,
                 pad_id: int | None = None) -> torch.Tensor:
        """Generate targets for ``src [B, n]`` (``src_mask``): the decoder starts from ``bos_id``
        and runs greedy search (``num_beams = 1``) or beam search
        (:func:`~graphattn.models.beam_search`, ``length_penalty``), each sample stopping at
        ``eos_id``. The model runs in evaluation mode (no dropout) and is put back as it was.
        Returns ``[B, L]`` new tokens (``L <= max_new_tokens``), ``pad_id`` (default
        ``eos_id``) after a sample's eos."""
        src = check_tokens(src, self.vocab_size, "src")
        bos_id = check_int("bos_id", bos_id, minimum=0, maximum=self.vocab_size - 1)
        num_beams = check_int("num_beams", num_beams, minimum=1)
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(src, src_mask)
            mask = None if src_mask is None else check_mask(src_mask, src.shape, "src_mask")
            cache = self.start_decoding(memory, mask, capacity=max_new_tokens)
            logits = self.decode_step(torch.full((src.shape[0],), bos_id, device=src.device), cache)
            return search(lambda tokens: self.decode_step(tokens, cache), cache, logits, num_beams=num_beams,
                          max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty)
        finally:
            self.train(was_training)
