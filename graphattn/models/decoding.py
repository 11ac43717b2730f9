"""Incremental decoding over attention graphs: causal graphs built row by row, a key/value
cache, attention of a few query rows per sample against that cache, and greedy / beam search.

A decoding step computes query row ``t`` only. Its keys come from the graph's rule through the
rules' ``queries=range(t, t + 1)`` hook (:class:`CausalRule`); the keys and values of every
earlier position come from the cache (:class:`DecoderCache`). The step attention
(:func:`row_attention`) is the graph attention of those rows written for its shape: a handful
of query rows per sample, each with its own key list, padded to one width with a validity
mask. It needs no tiling plan (a plan describes many queries; a step's key lists change every
step), so a decoding loop builds none.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from graphattn._validate import check_float, check_int
from graphattn.graph import AttentionGraph, NodeType
from graphattn.models._ragged import lru_get
from graphattn.rules.position import full

__all__ = ["CausalRule", "DecoderCache", "row_attention", "project_heads", "cached_self_attention",
           "greedy_search", "beam_search", "search"]

_ROW_CHUNK = 64  # query rows a CausalRule builds (and caches) at once while decoding


class CausalRule:
    r"""A causal attention graph over tokens, built row by row: row ``i`` (query ``i``) attends
    the keys ``j <= i`` of ``rule(N, queries=range(i, i + 1), **params).causal()``.

    ``N`` is ``context`` when given (the graph of a fixed context length: BigBird's random and
    last global blocks depend on the length, so a BigBird decoder fixes it), else ``i + 1``,
    which is right for rules whose row ``i`` does not depend on the length (full, band, dilated,
    block-local, Longformer with leading global tokens). Either way every row is fixed once
    built, so the graph of a prefix is the prefix of the graph: a full causal forward over ``n``
    tokens and ``n`` incremental steps compute the same thing.

    ``CausalRule(...)(n)`` (or :meth:`graph`) is the AttentionGraph over ``n`` tokens;
    :meth:`row_keys` gives decoding steps their key lists. ``rule`` must be a position rule of
    :mod:`graphattn.rules` (it takes ``queries=``) whose graph has token nodes only.

    >>> from graphattn import rules
    >>> CausalRule(rules.band, radius=1)(4).edge_index.tolist()
    [[0, 0, 1, 1, 2, 2, 3], [0, 1, 1, 2, 2, 3, 3]]
    >>> bigbird = CausalRule(rules.bigbird, context=4096, block_size=16, seed=0)
    >>> short, longer = bigbird(64), bigbird(100)  # the first 64 rows of either are the same
    >>> torch.equal(longer.edge_index[:, :short.num_edges], short.edge_index)
    True
    """

    def __init__(self, rule: Callable[..., AttentionGraph], *, context: int | None = None, **params):
        if not callable(rule):
            raise TypeError(f"expected rule to be callable, got {type(rule).__name__}")
        self.rule = rule
        self.context = None if context is None else check_int("context", context, minimum=1)
        self.params = params
        # Full attention's rows are the whole prefix: keys are slots 0..i of the cache, no lists.
        self.prefix = rule is full and not params
        self._chunks: OrderedDict = OrderedDict()
        self._graphs: OrderedDict = OrderedDict()

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        ctx = f", context={self.context}" if self.context is not None else ""
        return f"CausalRule({getattr(self.rule, '__name__', repr(self.rule))}{ctx}{args})"

    def __call__(self, n: int) -> AttentionGraph:
        return self.graph(n)

    def _check_length(self, n: int, name: str = "n") -> int:
        n = check_int(name, n, minimum=0)
        if self.context is not None and n > self.context:
            raise ValueError(f"expected at most context = {self.context} tokens, got {name} = {n}")
        return n

    def rows(self, start: int, stop: int) -> AttentionGraph:
        """Rows ``[start, stop)`` (edges sorted by query, key ``<=`` query), as an AttentionGraph
        over ``stop`` nodes."""
        stop = self._check_length(stop, "stop")
        start = check_int("start", start, minimum=0, maximum=stop)
        n = stop if self.context is None else self.context
        g = self.rule(n, queries=range(start, stop), **self.params)
        if not isinstance(g, AttentionGraph):
            raise TypeError(f"expected rule to return an AttentionGraph, got {type(g).__name__}")
        if g.num_nodes != n or bool((g.node_type != int(NodeType.TOKEN)).any()):
            raise ValueError(f"expected a rule whose graph has token nodes only ({n} nodes), got "
                             f"{g.num_nodes} nodes of types {sorted(set(g.node_type.tolist()))}")
        g = g.causal()
        return AttentionGraph._trusted(g.edge_index, stop, g.node_type[:stop], g.edge_label, g.relative,
                                       g.head_mask)

    def graph(self, n: int) -> AttentionGraph:
        """The causal graph over ``n`` tokens (rows ``0..n-1``), cached per length."""
        n = self._check_length(n)
        return lru_get(self._graphs, n, lambda: self.rows(0, n), 16)

    def _chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[c * 64, c * 64 + 64)`` as padded key lists ``(keys [64, m], valid [64, m])``."""
        def make():
            start = c * _ROW_CHUNK
            stop = start + _ROW_CHUNK if self.context is None else min(start + _ROW_CHUNK, self.context)
            key, query = self.rows(start, stop).edge_index
            row = query - start
            counts = torch.bincount(row, minlength=_ROW_CHUNK)
            first = torch.cumsum(counts, 0) - counts
            slot = torch.arange(key.numel()) - first[row]
            width = int(counts.max()) if key.numel() else 0
            keys = torch.zeros(_ROW_CHUNK, width, dtype=torch.int64)
            valid = torch.zeros(_ROW_CHUNK, width, dtype=torch.bool)
            keys[row, slot] = key
            valid[row, slot] = True
            return keys, valid

        return lru_get(self._chunks, c, make, 8)

    def row_keys(self, positions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Key lists of the rows ``positions [B]`` (one query row per sample): ``(index [B, m],
        valid [B, m])``, ``index`` None when the keys are the slots ``0..m-1`` themselves
        (full attention)."""
        device = positions.device
        if self.context is not None and positions.numel() and int(positions.max()) >= self.context:
            raise ValueError(f"expected positions < context = {self.context}, got {int(positions.max())}")
        if self.prefix:
            m = int(positions.max()) + 1 if positions.numel() else 0
            return None, torch.arange(m, device=device)[None, :] <= positions[:, None]
        pos = positions.cpu()
        chunk = pos // _ROW_CHUNK
        parts = {c: self._chunk(c) for c in torch.unique(chunk).tolist()}
        width = max(k.shape[1] for k, _ in parts.values())
        index = torch.zeros(pos.numel(), width, dtype=torch.int64)
        valid = torch.zeros(pos.numel(), width, dtype=torch.bool)
        for c, (keys, ok) in parts.items():
            sel = chunk == c
            rows = pos[sel] - c * _ROW_CHUNK
            index[sel, :keys.shape[1]] = keys[rows]
            valid[sel, :keys.shape[1]] = ok[rows]
        return index.to(device), valid.to(device)


class DecoderCache:
    """What incremental decoding keeps, per sample (rows of the batch).

    Attributes:
        keys, values: per self-attention layer ``[B, S, H, D]``: slot ``s`` holds the key and
            value of node ``s`` (token ``s``; a model with extra nodes numbers them after the
            tokens), written when the node is computed.
        lengths: ``[B]`` tokens decoded so far per sample (the next token's position).
        cross_keys, cross_values: per cross-attention layer ``[B, n, H, D]``: the encoder
            output projected once per source (None for a decoder-only model).
        cross_mask: ``[B, n]`` bool, the real source positions.
        extra: model-specific state (tensors with the batch first), reordered with the rest.

    :meth:`reorder` selects and repeats rows (beam search); :meth:`write` stores new keys.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: torch.Tensor, *,
                 cross_keys: list[torch.Tensor] | None = None, cross_values: list[torch.Tensor] | None = None,
                 cross_mask: torch.Tensor | None = None, extra: dict | None = None):
        self.keys, self.values, self.lengths = keys, values, lengths
        self.cross_keys, self.cross_values, self.cross_mask = cross_keys, cross_values, cross_mask
        self.extra = {} if extra is None else extra

    @classmethod
    def empty(cls, num_layers: int, batch_size: int, capacity: int, num_heads: int, head_dim: int, *,
              dtype, device) -> "DecoderCache":
        """A cache of ``capacity`` slots per sample and layer, nothing decoded yet."""
        shape = (batch_size, capacity, num_heads, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   torch.zeros(batch_size, dtype=torch.int64, device=device))

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.lengths.numel()

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rows: torch.Tensor | None = None) -> None:
        """Store ``k``, ``v`` ``[..., H, D]`` at ``slots [...]`` of sample ``rows [...]`` (default:
        the leading dimension is the batch)."""
        if rows is None:
            rows = torch.arange(slots.shape[0], device=slots.device).view(-1, *([1] * (slots.dim() - 1)))
            rows = rows.expand_as(slots)
        if slots.numel() and int(slots.max()) >= self.capacity:
            raise ValueError(f"expected the cache to hold slot {int(slots.max())}, got capacity {self.capacity} "
                             "(start decoding with a larger capacity)")
        self.keys[layer].index_put_((rows, slots), k.to(self.keys[layer].dtype))
        self.values[layer].index_put_((rows, slots), v.to(self.values[layer].dtype))

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (with repeats): row ``i`` becomes the old row ``index[i]``."""
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.keys = [pick(t) for t in self.keys]
        self.values = [pick(t) for t in self.values]
        self.lengths = pick(self.lengths)
        if self.cross_keys is not None:
            self.cross_keys = [pick(t) for t in self.cross_keys]
            self.cross_values = [pick(t) for t in self.cross_values]
        if self.cross_mask is not None:
            self.cross_mask = pick(self.cross_mask)
        self.extra = {k: pick(v) for k, v in self.extra.items()}


def project_heads(linear: nn.Linear, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``linear(x)`` split into heads: ``[..., E] -> [..., H, E / H]``."""
    y = linear(x)
    return y.view(*y.shape[:-1], num_heads, y.shape[-1] // num_heads)


def cached_self_attention(attn, h: torch.Tensor, cache: "DecoderCache", layer: int, positions: torch.Tensor,
                          index: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor:
    """One decoding step of a self-attention layer ``attn`` (its ``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj``, ``num_heads``): stores the key and value of ``h [B, E]`` at
    ``positions`` in ``cache`` (layer ``layer``), attends the row's keys (``index``, ``valid``
    ``[B, m]``, see :meth:`CausalRule.row_keys`) and returns the projected output ``[B, E]``."""
    B, H = h.shape[0], attn.num_heads
    q, k, v = (project_heads(p, h, H) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    cache.write(layer, positions, k, v)
    out = row_attention(q[:, None], cache.keys[layer], cache.values[layer], valid[:, None],
                        None if index is None else index[:, None])
    return attn.out_proj(out.reshape(B, -1))


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor,
                  index: torch.Tensor | None = None, *, bias: torch.Tensor | None = None,
                  scale: float | None = None) -> torch.Tensor:
    r"""Exact softmax attention of a few query rows per sample, each over its own keys.

    .. math::
        \mathrm{out}_{b,r,h} = \sum_{s:\,\mathrm{valid}_{b,r,s}} \alpha_{b,r,s,h}\,
        v_{b,\mathrm{index}_{b,r,s},h}, \qquad \alpha_{b,r,\cdot,h} = \operatorname{softmax}_s
        \big(\mathrm{scale}\; q_{b,r,h} \cdot k_{b,\mathrm{index}_{b,r,s},h} + \mathrm{bias}_{b,r,s,h}\big)

    the graph attention of the edges ``(index[b, r, s], r)`` of sample ``b`` with a padded
    ("ELL") key list per row. Rows without a valid key give zeros, as in the engine. Computed
    in float64 for float64 inputs, else in float32.

    Args:
        q: ``[B, R, H, D]`` query rows. k, v: ``[B, S, H, D]`` / ``[B, S, H, Dv]`` (the cache).
        valid: bool ``[B, R, m]`` (or broadcasting to it, e.g. ``[B, 1, m]``): which of the ``m``
            key slots of a row are edges.
        index: ``[B, R, m]`` slot ids into ``S``; None: slot ``s`` is key ``s`` (``m <= S``).
        bias: optional ``[B, R, m, H]`` added to the scores.
        scale: default ``1 / sqrt(D)``.

    Returns:
        ``[B, R, H, Dv]`` in the dtype of ``q``.
    """
    B, R, H, D = q.shape
    m = valid.shape[-1]
    valid = valid.expand(B, R, m)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if scale is None else check_float("scale", scale)
    if index is None:
        kk, vv = k[:, :m].to(acc), v[:, :m].to(acc)  # [B, m, H, D], shared by the rows
        s = torch.einsum("brhd,bmhd->brhm", q.to(acc), kk)
    else:
        rows = torch.arange(B, device=q.device).view(B, 1, 1)
        kk, vv = k[rows, index].to(acc), v[rows, index].to(acc)  # [B, R, m, H, D]
        s = torch.einsum("brhd,brmhd->brhm", q.to(acc), kk)
    s = s * scale
    if bias is not None:
        s = s + bias.to(acc).permute(0, 1, 3, 2)
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(valid.any(-1)[:, :, None, None], p, torch.zeros_like(p))
    out = torch.einsum("brhm,bmhd->brhd", p, vv) if index is None else torch.einsum("brhm,brmhd->brhd", p, vv)
    return out.to(q.dtype)


def _check_search(max_new_tokens, eos_id, pad_id, vocab_size: int):
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    if eos_id is not None:
        eos_id = check_int("eos_id", eos_id, minimum=0, maximum=vocab_size - 1)
    if pad_id is None:
        pad_id = 0 if eos_id is None else eos_id
    pad_id = check_int("pad_id", pad_id, minimum=0, maximum=vocab_size - 1)
    return max_new_tokens, eos_id, pad_id


def greedy_search(step: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, *, max_new_tokens: int,
                  eos_id: int | None = None, pad_id: int | None = None) -> torch.Tensor:
    """Greedy decoding: the most likely next token, per sample, until ``eos_id`` or
    ``max_new_tokens``.

    ``logits [B, V]``: scores of the first new token; ``step(tokens [B]) -> logits [B, V]``
    feeds the chosen tokens and returns the scores of the next ones. Returns ``[B, L]`` (``L <=
    max_new_tokens``, the steps run), the tokens after a sample's ``eos_id`` set to ``pad_id``
    (default ``eos_id``, or 0); the loop stops once every sample has produced ``eos_id``.
    """
    max_new_tokens, eos_id, pad_id = _check_search(max_new_tokens, eos_id, pad_id, logits.shape[-1])
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out = []
    for t in range(max_new_tokens):
        token = torch.where(done, pad_id, logits.argmax(-1))
        out.append(token)
        if eos_id is not None:
            done = done | (token == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        logits = step(token)
    return torch.stack(out, dim=1)


def beam_search(step: Callable[[torch.Tensor], torch.Tensor], reorder: Callable[[torch.Tensor], None],
                logits: torch.Tensor, *, num_beams: int, max_new_tokens: int, eos_id: int | None = None,
                pad_id: int | None = None, length_penalty: float = 0.0) -> torch.Tensor:
    r"""Beam search: per sample, the ``num_beams`` best partial hypotheses by summed
    log-probability; a hypothesis ends at ``eos_id`` and is scored
    :math:`\sum_t \log p_t / L^{\mathrm{length\_penalty}}` (``L`` its length, eos included).

    ``logits [B * K, V]``: scores of the first new token, each sample's ``K = num_beams`` rows
    identical (rows ``b * K .. b * K + K - 1``); ``step(tokens [B * K])`` as in
    :func:`greedy_search`; ``reorder(index [B * K])`` makes the decoder state's row ``i`` the
    old row ``index[i]`` (a hypothesis continues another's prefix).

    Each step takes the ``2K`` best continuations; those ending at ``eos_id`` among the first
    ``K`` are finished, the first ``K`` others carry on. A sample stops when its best finished
    score beats every score a live hypothesis can still reach (with ``length_penalty > 0``
    the bound takes the longest length, ``max_new_tokens``), so the result is the best
    hypothesis the beam ever held; ``num_beams = 1`` is greedy decoding. Returns the best
    hypothesis per sample ``[B, L]``, padded after eos with ``pad_id`` as in
    :func:`greedy_search`.
    """
    K = check_int("num_beams", num_beams, minimum=1)
    lp = check_float("length_penalty", length_penalty)
    V = logits.shape[-1]
    max_new_tokens, eos_id, pad_id = _check_search(max_new_tokens, eos_id, pad_id, V)
    if logits.shape[0] % K:
        raise ValueError(f"expected logits with B * num_beams rows, got {logits.shape[0]} rows for {K} beams")
    B, device = logits.shape[0] // K, logits.device
    rows = torch.arange(B, device=device)
    scores = torch.zeros(B, K, dtype=torch.float64, device=device)
    scores[:, 1:] = float("-inf")  # the K copies of a sample start as one hypothesis
    seqs = torch.zeros(B, K, 0, dtype=torch.int64, device=device)
    best = torch.full((B,), float("-inf"), dtype=torch.float64, device=device)
    best_seq = torch.full((B, max_new_tokens), pad_id, dtype=torch.int64, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    width = min(2 * K if eos_id is not None else K, K * V)
    steps = 0
    for t in range(max_new_tokens):
        steps = t + 1
        logp = torch.log_softmax(logits.to(torch.float64), dim=-1).view(B, K, V)
        top, idx = (scores[..., None] + logp).view(B, K * V).topk(width, dim=1)
        beam, token = idx // V, idx % V
        length = float(t + 1)
        if eos_id is not None:
            is_eos = token == eos_id
            rank = torch.arange(width, device=device)
            finished = is_eos & (rank < K) & ~done[:, None] & torch.isfinite(top)
            cand = torch.where(finished, top / length ** lp, torch.full_like(top, float("-inf")))
            cand_best, cand_at = cand.max(dim=1)
            better = cand_best > best
            if bool(better.any()):
                b = rows[better]
                prefix = seqs[b, beam[b, cand_at[b]]]
                best_seq[b, :t] = prefix
                best_seq[b, t] = eos_id
                best_seq[b, t + 1:] = pad_id
                best[better] = cand_best[better]
            carry = ~is_eos
            keep = carry & (torch.cumsum(carry, dim=1) <= K)
            # The first K continuations that do not end (stable: best first); a row with fewer
            # (a vocabulary of fewer than 2 tokens per beam) fills up with dead hypotheses.
            pick = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :K]
            top = torch.where(keep, top, torch.full_like(top, float("-inf")))
        else:
            pick = torch.arange(K, device=device).expand(B, K)
        scores = top.gather(1, pick)
        beam, token = beam.gather(1, pick), token.gather(1, pick)
        seqs = torch.cat([seqs[rows[:, None], beam], token[..., None]], dim=2)
        if eos_id is not None:
            alive = scores.max(dim=1).values
            if lp > 0:
                reach = alive / float(max_new_tokens) ** lp
            elif lp < 0:
                reach = alive / float(t + 2) ** lp
            else:
                reach = alive
            done = done | (best >= reach)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        reorder((rows[:, None] * K + beam).reshape(-1))
        logits = step(token.reshape(-1))
    # Samples still running: the best live hypothesis (no eos yet) competes with the finished.
    final = scores / float(steps) ** lp
    live_best, live_at = final.max(dim=1)
    use_live = ~done & (live_best > best)
    b = rows[use_live]
    best_seq[b, :steps] = seqs[b, live_at[b]]
    return best_seq[:, :steps]


def search(step: Callable[[torch.Tensor], torch.Tensor], cache: DecoderCache, logits: torch.Tensor, *,
           num_beams: int, max_new_tokens: int, eos_id: int | None, pad_id: int | None,
           length_penalty: float) -> torch.Tensor:
    """Greedy search for ``num_beams = 1``, else beam search: the cache (and the first
    ``logits [B, V]``) are repeated ``num_beams`` times per sample first."""
    num_beams = check_int("num_beams", num_beams, minimum=1)
    if num_beams == 1:
        return greedy_search(step, logits, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    expand = torch.arange(logits.shape[0], device=logits.device).repeat_interleave(num_beams)
    cache.reorder(expand)
    return beam_search(step, cache.reorder, logits[expand], num_beams=num_beams, max_new_tokens=max_new_tokens,
                       eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty)
