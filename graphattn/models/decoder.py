"""Decoder-only language models over causal attention graphs: a sparse GPT
(:class:`SparseDecoder`, any token-only causal graph: full, band, BigBird-causal) and the
causal BP-Transformer (:class:`BPTDecoder`, tokens plus span nodes), both with padded batches,
incremental decoding from a cache and greedy / beam generation."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from graphattn import rules
from graphattn._validate import check_float, check_int
from graphattn.graph import EdgeLabel
from graphattn.models._ragged import batched_graph, check_mask, check_tokens, lru_get, ragged_mask
from graphattn.models.bpt import _WithLevels
from graphattn.models.decoding import (CausalRule, DecoderCache, cached_self_attention, project_heads,
                                       row_attention, search)
from graphattn.models.encoder import SparseEncoderLayer
from graphattn.models.star import embed_std
from graphattn.rules.bpt import bpt_levels

__all__ = ["SparseDecoder", "BPTDecoder"]

_CACHE_SIZE = 16  # union graphs kept per model, one per (lengths, device)


class SparseDecoder(nn.Module):
    r"""Decoder-only (GPT-style) language model whose self-attention is a causal graph.

    Token ``i`` starts as :math:`\mathrm{Emb}(w_i) + P_i` (learned positions); ``num_layers``
    pre-norm layers (:class:`~graphattn.models.SparseEncoderLayer`: attention over the causal
    graph ``graph(n)``, then FFN), a final LayerNorm and a projection to the vocabulary (tied to
    the token embedding by default) give the logits of token ``i + 1``, which depend on tokens
    ``0..i`` only.

    ``graph`` is a :class:`~graphattn.models.CausalRule`: ``CausalRule(rules.full)`` (GPT),
    ``CausalRule(rules.band, radius=128, causal=True)`` (local attention),
    ``CausalRule(rules.bigbird, context=N, block_size=64, seed=0)`` (BigBird restricted to
    ``key <= query``, over a fixed context of ``N`` tokens).

    **Padded batches.** ``attention_mask [B, n]`` (bool or 0/1, true at real tokens, anywhere in
    a row): every sample runs over its own causal graph (one union, one engine call per layer),
    positions count its real tokens, padded positions get zero logits.

    **Decoding.** :meth:`prefill` runs the prompt (a padded batch) through the full forward and
    fills a :class:`~graphattn.models.DecoderCache`; :meth:`decode_step` then computes one new
    position per sample: the graph's row at that position (``rule(..., queries=range(t, t + 1))``)
    against the cached keys and values. Steps equal the full forward position by position.
    :meth:`generate` runs greedy or beam search on top.

    Args:
        vocab_size, embed_dim, num_heads, num_layers: sizes.
        graph: the causal graph, a :class:`~graphattn.models.CausalRule`.
        ff_dim, dropout: FFN width (default ``4 * E``) and dropout (training only).
        max_len: learned positions.
        tie_embeddings: share the output projection with the token embedding.

    Shapes:
        - **tokens**: int ``[B, n]``; **attention_mask** (optional) ``[B, n]`` -> **logits**
          ``[B, n, vocab_size]``

    >>> from graphattn import rules
    >>> lm = SparseDecoder(20, 8, 2, 2, CausalRule(rules.band, radius=2, causal=True))
    >>> lm(torch.randint(0, 20, (3, 10))).shape
    torch.Size([3, 10, 20])
    >>> lm.generate(torch.randint(0, 20, (3, 4)), max_new_tokens=5).shape
    torch.Size([3, 5])
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, graph: CausalRule, *,
                 ff_dim: int | None = None, dropout: float = 0.0, max_len: int = 4096, tie_embeddings: bool = True,
                 num_relative: int | None = None):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.num_layers = check_int("num_layers", num_layers, minimum=1)
        self.max_len = check_int("max_len", max_len, minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self._set_graph(graph)
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(max_len, embed_dim)
        self.layers = nn.ModuleList(SparseEncoderLayer(embed_dim, num_heads, ff_dim=ff_dim, dropout=dropout,
                                                       num_relative=num_relative) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.output = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.token_embedding.weight
        self.drop = nn.Dropout(self.dropout)
        self._graphs: OrderedDict = OrderedDict()  # (n, device) -> graph
        self._batches: OrderedDict = OrderedDict()  # (lengths, device) -> union graph (and extras)
        self.reset_parameters()

    def _set_graph(self, graph) -> None:
        if not isinstance(graph, CausalRule):
            raise TypeError(f"expected graph to be a CausalRule, got {type(graph).__name__}")
        self.graph = graph

    def reset_parameters(self) -> None:
        std = embed_std(self.embed_dim)
        nn.init.normal_(self.token_embedding.weight, std=std)
        nn.init.normal_(self.position_embedding.weight, std=std)
        if self.output.weight is not self.token_embedding.weight:
            nn.init.normal_(self.output.weight, std=std)
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def _check_length(self, n: int) -> None:
        if n > self.max_len:
            raise ValueError(f"expected sequences of at most max_len = {self.max_len} tokens, got {n}")

    # ------------------------------------------------------------------ full forward
    def _batch_graph(self, r, device):
        """``(graph, token node ids [T])`` of the ragged batch ``r``: the union of the
        per-sample causal graphs (tokens only: node ``ptr[b] + i`` is token ``i`` of ``b``)."""
        g, ptr = batched_graph(self.graph, r.lengths, device, self._batches, size=_CACHE_SIZE)
        return g, ptr[:-1][r.sample] + r.position

    def _inputs(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Token inputs ``Emb(w) + P`` (no dropout)."""
        return self.token_embedding(ids) + self.position_embedding(position)

    def _forward_nodes(self, r, ids: torch.Tensor, device):
        """``(node inputs [N, E], graph, token node ids [T])`` of the union (before dropout)."""
        g, tok = self._batch_graph(r, device)
        x = self._inputs(ids, r.position)
        return x.new_zeros(g.num_nodes, self.embed_dim).index_put((tok,), x), g, tok

    def _run(self, x: torch.Tensor, graph, write=None) -> torch.Tensor:
        """The layers over ``x [N, E]`` (or ``[B, N, E]``) and ``graph``; ``write(layer, k, v)``
        gets every layer's keys and values (a prefill stores them)."""
        for l, layer in enumerate(self.layers):
            if write is not None:
                h = layer.norm1(x)
                write(l, project_heads(layer.attn.k_proj, h, self.num_heads),
                      project_heads(layer.attn.v_proj, h, self.num_heads))
            x = x + layer.attention_block(x, graph)
            x = x + layer.ff_block(x)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = check_tokens(tokens, self.vocab_size)
        mask = None if attention_mask is None else check_mask(attention_mask, tokens.shape)
        if mask is None or bool(mask.all()):
            if self._plain_path():
                n = tokens.shape[1]
                self._check_length(n)
                x = self.drop(self._inputs(tokens, torch.arange(n, device=tokens.device)))
                g = lru_get(self._graphs, (n, str(tokens.device)), lambda: self.graph(n).to(tokens.device),
                            _CACHE_SIZE)
                return self.output(self._run(x, g))
            mask = torch.ones_like(tokens, dtype=torch.bool)
        r = ragged_mask(mask)
        self._check_length(int(r.lengths.max()))
        x, g, tok = self._forward_nodes(r, tokens[mask], tokens.device)
        h = self._run(self.drop(x), g)
        return r.scatter(self.output(h[tok]))

    def _plain_path(self) -> bool:
        """Whether an unpadded batch can share one graph of tokens only (batched engine call)."""
        return True

    # ------------------------------------------------------------------ incremental decoding
    def _empty_cache(self, batch_size: int, capacity: int, dtype, device) -> DecoderCache:
        return DecoderCache.empty(self.num_layers, batch_size, capacity, self.num_heads, self.head_dim,
                                  dtype=dtype, device=device)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                capacity: int) -> tuple[DecoderCache, torch.Tensor]:
        """Run the prompt ``tokens [B, n]`` (``attention_mask``) through the full forward (no
        dropout) and keep every layer's keys and values: ``(cache, logits [B, vocab])`` with the
        logits after each sample's last real token. ``capacity``: tokens the cache holds per
        sample (prompt plus the positions to decode)."""
        tokens = check_tokens(tokens, self.vocab_size)
        capacity = check_int("capacity", capacity, minimum=1)
        self._check_length(capacity)
        mask = (torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None
                else check_mask(attention_mask, tokens.shape))
        r = ragged_mask(mask)
        if int(r.lengths.max()) > capacity:
            raise ValueError(f"expected capacity >= the longest prompt ({int(r.lengths.max())} tokens), got {capacity}")
        dtype = self.token_embedding.weight.dtype
        cache = self._empty_cache(tokens.shape[0], capacity, dtype, tokens.device)
        x, g, slots, rows, last = self._prefill_nodes(r, tokens[mask], cache)

        def write(layer, k, v):
            cache.write(layer, slots, k[rows >= 0], v[rows >= 0], rows=rows[rows >= 0])

        h = self._run(x, g, write)
        cache.lengths = r.lengths.clone()
        return cache, self.output(h[last])

    def _prefill_nodes(self, r, ids, cache):
        """Node inputs, graph, cache slots of the nodes to store, their sample per node (-1: not
        stored) and the node of each sample's last token."""
        x, g, tok = self._forward_nodes(r, ids, ids.device)
        rows = torch.full((g.num_nodes,), -1, dtype=torch.int64, device=ids.device)
        rows[tok] = r.sample
        return x, g, r.position, rows, tok[r.ptr[1:] - 1]

    def _check_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        tokens = check_tokens(tokens[:, None], self.vocab_size, "tokens")[:, 0]
        top = int(cache.lengths.max())
        if top >= min(self.max_len, self._token_capacity(cache)):
            raise ValueError(f"expected a free position in the cache (capacity {self._token_capacity(cache)}, "
                             f"max_len {self.max_len}), got position {top}")
        return tokens

    def _token_capacity(self, cache: DecoderCache) -> int:
        return cache.capacity

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Feed ``tokens [B]`` at the next position of every sample (``cache.lengths``); returns
        the logits of the following token ``[B, vocab]`` and advances the cache. Equals the full
        forward at that position (in evaluation mode; steps never apply dropout)."""
        tokens = self._check_step(tokens, cache)
        positions = cache.lengths
        x = self._inputs(tokens, positions)
        index, valid = self.graph.row_keys(positions)
        for l, layer in enumerate(self.layers):
            x = x + cached_self_attention(layer.attn, layer.norm1(x), cache, l, positions, index, valid)
            x = x + layer.ff(layer.norm2(x))
        cache.lengths = positions + 1
        return self.output(self.norm(x))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None = None, max_new_tokens: int = 64, *,
                 eos_id: int | None = None, num_beams: int = 1, length_penalty: float = 0.0,
                 pad_id: int | None = None) -> torch.Tensor:
        """Continue every prompt of ``prompt [B, n]`` (``prompt_mask``: padding anywhere) with
        greedy (``num_beams = 1``) or beam search (:func:`~graphattn.models.beam_search`), each
        sample stopping at ``eos_id``. Runs in evaluation mode and puts the model back as it
        was. Returns the new tokens ``[B, L]`` (``L <= max_new_tokens``; ``pad_id``, default
        ``eos_id``, after a sample's eos)."""
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        check_int("num_beams", num_beams, minimum=1)
        was_training = self.training
        self.eval()
        try:
            mask = (torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None
                    else check_mask(prompt_mask, prompt.shape, "prompt_mask"))
            longest = int(mask.sum(1).max()) if prompt.numel() else 0
            # The last new token is returned, never fed: the cache holds prompt + max_new - 1.
            cache, logits = self.prefill(prompt, mask, capacity=longest + max_new_tokens - 1)
            return search(lambda tokens: self.decode_step(tokens, cache), cache, logits, num_beams=num_beams,
                          max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty)
        finally:
            self.train(was_training)


class _BPTTree:
    """Node numbering of the BP-Transformer tree over a context of ``n`` tokens: node ``(l, v)``
    is ``shift[l] + v`` (tokens are level 0)."""

    def __init__(self, n: int):
        self.sizes = bpt_levels(n)
        shift = [0]
        for s in self.sizes:
            shift.append(shift[-1] + s)
        self.shift = shift
        self.num_nodes = shift[-1]


class BPTDecoder(SparseDecoder):
    r"""Causal BP-Transformer language model (Ye et al., 2019): self-attention over the tokens
    and span nodes of ``rules.bp_transformer(n, k=k, causal=True)``.

    Inputs as :class:`~graphattn.models.BPTransformerClassifier`: token ``i`` is
    :math:`\mathrm{Emb}(w_i) + P_i + L_0`, a span node at level ``l`` the mean of the token
    inputs it covers plus a level embedding :math:`L_l`; every layer attends with a learned
    per-head bias of the edge's relative id. Logits are read at the token nodes. With
    ``causal=True`` a token attends only itself, its left neighbours and spans lying wholly to
    its left, and a span attends only the tokens it covers, so the logits of token ``i`` depend
    on tokens ``0..i`` only.

    **Decoding.** The tree of a context of ``N`` tokens numbers the cache's slots (tokens, then
    spans level by level), and a token's keys are the same (level, span) nodes in the tree of
    any length that holds it. Step ``t`` computes token ``t`` (its row of
    ``rules.bp_transformer(N, k=k, causal=True, queries=range(t, t + 1))``) and the spans that
    token ``t`` completes (span ``(l, v)`` with ``(v + 1) 2^l = t + 1``, attending its
    ``2^l`` tokens), in one attention call per layer; spans still open are never read by a
    token, so they are not computed. ``N`` is the cache capacity.

    Args:
        vocab_size, embed_dim, num_heads, num_layers: sizes.
        k: contextual keys per side and level.
        ff_dim, dropout, max_len, tie_embeddings: as in :class:`SparseDecoder`.

    Shapes:
        - **tokens**: int ``[B, n]``; **attention_mask** (optional) ``[B, n]`` -> **logits**
          ``[B, n, vocab_size]``

    >>> lm = BPTDecoder(20, 8, 2, 2, k=1)
    >>> lm(torch.randint(0, 20, (3, 10))).shape
    torch.Size([3, 10, 20])
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_heads: int, num_layers: int, k: int, *,
                 ff_dim: int | None = None, dropout: float = 0.0, max_len: int = 4096, tie_embeddings: bool = True):
        self.k = check_int("k", k, minimum=1)
        max_len = check_int("max_len", max_len, minimum=1)
        num_levels = len(bpt_levels(max_len))
        super().__init__(vocab_size, embed_dim, num_heads, num_layers, None, ff_dim=ff_dim, dropout=dropout,
                         max_len=max_len, tie_embeddings=tie_embeddings, num_relative=(2 * self.k + 1) * num_levels)
        self.level_embedding = nn.Embedding(num_levels, embed_dim)
        nn.init.normal_(self.level_embedding.weight, std=embed_std(embed_dim))
        self._post = _WithLevels(2 * self.k + 1)
        self._per_length = _BPTGraphs(self.k)
        self._rows: OrderedDict = OrderedDict()  # (context, chunk) -> token rows as key lists

    def _set_graph(self, graph) -> None:
        self.graph = None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "level_embedding"):
            nn.init.normal_(self.level_embedding.weight, std=embed_std(self.embed_dim))

    def _plain_path(self) -> bool:
        return False

    def _batch_graph(self, r, device):
        g, level, ptr = batched_graph(self._per_length, r.lengths, device, self._batches, self._post, _CACHE_SIZE)
        return g, ptr[:-1][r.sample] + r.position

    def _forward_nodes(self, r, ids, device):
        g, level, ptr = batched_graph(self._per_length, r.lengths, device, self._batches, self._post, _CACHE_SIZE)
        tok = ptr[:-1][r.sample] + r.position
        e = self._inputs(ids, r.position)
        x = e.new_zeros(g.num_nodes, self.embed_dim).index_put((tok,), e)
        # Span inputs: the mean of the covered token inputs (affiliated edges: token -> span).
        key, query = g.edge_index
        aff = g.edge_label == int(EdgeLabel.AFFILIATED)
        sums = torch.zeros_like(x).index_add(0, query[aff], x[key[aff]])
        counts = torch.bincount(query[aff], minlength=g.num_nodes).clamp_min(1).to(x.dtype)
        x = torch.where((level > 0)[:, None], sums / counts[:, None], x) + self.level_embedding(level)
        return x, g, tok

    def _token_capacity(self, cache: DecoderCache) -> int:
        return cache.extra["inputs"].shape[1]

    def _empty_cache(self, batch_size: int, capacity: int, dtype, device) -> DecoderCache:
        tree = _BPTTree(capacity)
        cache = DecoderCache.empty(self.num_layers, batch_size, tree.num_nodes, self.num_heads, self.head_dim,
                                   dtype=dtype, device=device)
        cache.extra["inputs"] = torch.zeros(batch_size, capacity, self.embed_dim, dtype=dtype, device=device)
        return cache

    def _prefill_nodes(self, r, ids, cache):
        device = ids.device
        x, g, tok = self._forward_nodes(r, ids, device)
        _, level, ptr = batched_graph(self._per_length, r.lengths, device, self._batches, self._post, _CACHE_SIZE)
        cache.extra["inputs"].index_put_((r.sample, r.position), self._inputs(ids, r.position))
        # Node (l, v) of sample b's tree -> slot (l, v) of the context's tree; open spans
        # ((v + 1) 2^l > n_b) are computed later, when decoding completes them.
        tree = _BPTTree(cache.extra["inputs"].shape[1])
        lengths = r.lengths.tolist()
        levels = len(tree.sizes)
        own = torch.tensor([(_BPTTree(n).shift + [0] * levels)[:levels] for n in lengths], device=device)
        sample = torch.repeat_interleave(torch.arange(len(lengths), device=device), ptr[1:] - ptr[:-1])
        v = torch.arange(g.num_nodes, device=device) - ptr[:-1][sample] - own[sample, level]
        shift = torch.tensor(tree.shift[:levels], device=device)
        complete = (v + 1) << level <= r.lengths[sample]
        rows = torch.where(complete, sample, torch.full_like(sample, -1))
        slots = (shift[level] + v)[complete]
        return x, g, slots, rows, tok[r.ptr[1:] - 1]

    def _token_rows(self, context: int, positions: torch.Tensor):
        """Padded key lists ``(keys, relative ids, valid)`` ``[B, m]`` of the token rows at
        ``positions`` in the tree of ``context`` tokens (built 64 rows at a time, cached)."""
        def chunk(c):
            def make():
                start, stop = c * 64, min(c * 64 + 64, context)
                g = rules.bp_transformer(context, k=self.k, causal=True, queries=range(start, stop))
                key, query = g.edge_index
                row = query - start
                counts = torch.bincount(row, minlength=64)
                slot = torch.arange(key.numel()) - (torch.cumsum(counts, 0) - counts)[row]
                width = int(counts.max())
                keys = torch.zeros(64, width, dtype=torch.int64)
                rel = torch.zeros(64, width, dtype=torch.int64)
                valid = torch.zeros(64, width, dtype=torch.bool)
                keys[row, slot], rel[row, slot], valid[row, slot] = key, g.relative, True
                return keys, rel, valid

            return lru_get(self._rows, (context, c), make, 8)

        pos = positions.cpu()
        which = pos // 64
        parts = {c: chunk(c) for c in torch.unique(which).tolist()}
        width = max(p[0].shape[1] for p in parts.values())
        out = [torch.zeros(pos.numel(), width, dtype=dt) for dt in (torch.int64, torch.int64, torch.bool)]
        for c, tensors in parts.items():
            sel = which == c
            for o, t in zip(out, tensors):
                o[sel, :t.shape[1]] = t[pos[sel] - c * 64]
        return [o.to(positions.device) for o in out]

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        tokens = self._check_step(tokens, cache)
        t = cache.lengths
        B, H, device = t.numel(), self.num_heads, t.device
        context = cache.extra["inputs"].shape[1]
        tree = _BPTTree(context)
        levels = len(tree.sizes)
        # Spans completed by token t: levels 1..c with c the trailing zero bits of t + 1.
        ends = t + 1
        lvl = torch.arange(levels, device=device)
        done = ((ends[:, None] % (1 << lvl)) == 0) & (lvl > 0) & (lvl < levels)
        R = 1 + int(done.sum(1).max()) if levels > 1 else 1
        row_level = torch.arange(R, device=device)  # row r >= 1 is the span of level r
        row_valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=device), done[:, 1:R]], dim=1)
        tk, trel, tvalid = self._token_rows(context, t)
        m = max(tk.shape[1], 1 << (R - 1))
        index = torch.zeros(B, R, m, dtype=torch.int64, device=device)
        rel = torch.zeros(B, R, m, dtype=torch.int64, device=device)
        valid = torch.zeros(B, R, m, dtype=torch.bool, device=device)
        index[:, 0, :tk.shape[1]], rel[:, 0, :tk.shape[1]], valid[:, 0, :tk.shape[1]] = tk, trel, tvalid
        span = 1 << row_level[1:]  # [R - 1] tokens per span row
        first = ends[:, None] - span  # first covered token
        offs = torch.arange(m, device=device)
        index[:, 1:] = (first[..., None] + offs).clamp(0, context - 1)
        valid[:, 1:] = (offs < span[:, None]) & row_valid[:, 1:, None]
        rel[:, 1:] = ((2 * self.k + 1) * row_level[1:])[None, :, None]
        v = (ends[:, None] >> row_level) - 1
        slots = torch.where(row_level == 0, t[:, None], torch.tensor(tree.shift[:R], device=device) + v)
        # Layer-0 inputs: the token's, and each span's mean over its tokens (this one included).
        e = self._inputs(tokens, t)
        cache.extra["inputs"].index_put_((torch.arange(B, device=device), t), e)
        covered = cache.extra["inputs"][torch.arange(B, device=device)[:, None, None], index[:, 1:]]
        mean = (covered * valid[:, 1:, :, None]).sum(2) / span[None, :, None].to(e.dtype)
        x = torch.cat([e[:, None], mean], dim=1) + self.level_embedding(row_level)
        b_idx = torch.arange(B, device=device)[:, None].expand(B, R)[row_valid]
        for l, layer in enumerate(self.layers):
            a = layer.attn
            h = layer.norm1(x)
            q, k, vv = (project_heads(p, h, H) for p in (a.q_proj, a.k_proj, a.v_proj))
            cache.write(l, slots[row_valid], k[row_valid], vv[row_valid], rows=b_idx)
            out = row_attention(q, cache.keys[l], cache.values[l], valid, index, bias=a.relative_bias(rel))
            x = x + a.out_proj(out.reshape(B, R, -1))
            x = x + layer.ff(layer.norm2(x))
        cache.lengths = t + 1
        return self.output(self.norm(x[:, 0]))


class _BPTGraphs:
    """``n -> rules.bp_transformer(n, k=k, causal=True)``, cached per length."""

    def __init__(self, k: int):
        self.k = k
        self._store: OrderedDict = OrderedDict()

    def __call__(self, n: int):
        return lru_get(self._store, n, lambda: rules.bp_transformer(n, k=self.k, causal=True), 16)
