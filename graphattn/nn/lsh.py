"""Reformer LSH self-attention as a layer over per-head :func:`rules.lsh` graphs."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from graphattn._random import seed_key
from graphattn._validate import check_bool, check_float, check_heads, check_int
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.nn._routed import (add_lonely_self_loops, check_input, fold_heads, routed_attention, routed_output)
from graphattn.nn.attention import reset_projections
from graphattn.nn.functional import graph_attention
from graphattn.nn._replay import recorded
from graphattn.rules.hashing import _chunked_edges, _exact_edges, lsh_buckets

__all__ = ["LSHAttention"]

_SEED_LIMIT = 1 << 62
_EPS = 1e-12


def _check_seed(seed):
    if isinstance(seed, bool) or not (seed is None or isinstance(seed, (numbers.Integral, torch.Generator))):
        raise TypeError(f"expected seed to be an int, a torch.Generator or None, got {type(seed).__name__}")
    return seed


def head_seeds(seed, num_heads: int) -> torch.Tensor:
    """``num_heads`` int64 seeds in ``[0, 2**62)`` derived from ``seed`` (one draw when it is a
    generator or None; an int gives the same seeds every time)."""
    gen = torch.Generator().manual_seed(seed_key(seed))
    return torch.randint(0, _SEED_LIMIT, (num_heads,), generator=gen)


class LSHAttention(nn.Module):
    r"""Reformer LSH self-attention (Kitaev, Kaiser and Levskaya, "Reformer: The Efficient
    Transformer", ICLR 2020).

    Shared-QK: one projection gives the queries ``q_i = W_{qk}^h x_i`` of head ``h``; the keys
    are the same vectors length-normalised, ``k_j = q_j / \lVert q_j \rVert``. Reformer (Trax,
    Hugging Face) normalises keys to RMS 1 (norm ``sqrt(d)``) and scales scores by
    ``1/sqrt(d)``; that is exactly unit keys with score scale 1, which is what runs here:

    .. math::
        \mathbf{x}'_i = W_o \Big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}_h(i)}
        \operatorname{softmax}_{j}\big(q_i^\top q_j / \lVert q_j \rVert\big)\, W_v^h x_j

    ``N_h(i)`` is query ``i``'s key set in head ``h``'s graph, rebuilt every forward from that
    head's (detached) shared-QK vectors: the graph of :func:`graphattn.rules.lsh` with
    ``num_buckets``, ``num_hashes`` and ``chunk`` (its hashing :func:`graphattn.rules.hashing.lsh_buckets` and
    its edge builders; ``chunk=None``: exact buckets, ``i`` and ``j`` share a bucket in some
    round; ``chunk=c``: Reformer's sorted chunks, ``i`` attends its chunk and the previous one,
    so at most ``num_hashes * (2c - 1)`` keys). A token never attends itself unless it has no
    other key. Any ``N`` works (no multiple-of-chunk demand; the last chunk may be shorter).
    With ``causal=True`` only keys ``j <= i`` are kept, and a query left with no key attends
    itself (so token 0 always attends only itself). With ``chunk`` the chunk boundaries depend
    on every token's bucket, so *which* earlier keys a query sees can depend on later tokens
    (as in Reformer; gradients still never reach later tokens); exact buckets (``chunk=None``)
    depend on ``i`` and ``j`` alone.

    Rotations: head ``h`` hashes with rotations drawn from a per-head seed. With ``seed`` (an
    int, or a ``torch.Generator`` drawn from once at construction) the per-head seeds are fixed
    (buffer ``hash_seeds``), so outputs are deterministic in training and evaluation. With
    ``seed=None`` every training forward draws fresh per-head seeds from torch's default
    generator (one draw per forward, shared by the samples of a batch, as Reformer shares
    rotations across the batch), and evaluation uses the fixed seeds drawn at construction
    (also from torch's default generator; they are saved in the ``state_dict``). Inside a
    :class:`~graphattn.nn.ReversibleSequence` the buckets of the forward are recorded and reused
    by the backward's recomputation.

    Computation: the ``B * H`` graphs run in one exact engine call
    (:func:`graphattn.nn.functional.graph_attention`, heads folded into the rows) with tokens in
    (bucket, position) order of the first hash round, where buckets and chunks are contiguous
    runs of rows and fill dense tiles. With ``chunk`` and one round the graph in that order is
    the same every forward (chunk and previous chunk), so its tiling plan is built once and
    cached; causal masking is then a per-forward ``-inf`` bias on it. Other settings (exact
    buckets, several rounds) build the edge list and the plan every forward.

    Args:
        embed_dim: model width ``E`` (= ``num_heads * head_dim``).
        num_heads: attention heads ``H``.
        num_buckets: LSH buckets per round (even, >= 2).
        num_hashes: hash rounds (graphs are the union over rounds).
        chunk: Reformer chunk length, or None for exact buckets.
        causal: keep only keys at or before the query.
        seed: int, ``torch.Generator`` or None (see above).
        dropout: dropout on the attention probabilities (training only).
        bias: whether the projections have biases.

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]`` (each sample hashed on its own)
        - **output**: like ``x``; with ``return_graph=True`` also the graphs used: an
          :class:`~graphattn.AttentionGraph` over ``N`` tokens with a per-head layout
          (``head_mask [num_edges, H]``) for ``[N, E]`` input, a list of ``B`` of them for
          ``[B, N, E]``.

    >>> layer = LSHAttention(16, 2, num_buckets=4, chunk=4, seed=0)
    >>> out, g = layer(torch.randn(10, 16), return_graph=True)
    >>> out.shape, g.num_heads, bool((g.keys_per_query() >= 1).all())
    (torch.Size([10, 16]), 2, True)
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_buckets: int, num_hashes: int = 1,
                 chunk: int | None = None, causal: bool = False, seed=None, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = check_heads(embed_dim, num_heads)
        self.num_buckets = check_int("num_buckets", num_buckets, minimum=2)
        if self.num_buckets % 2:
            raise ValueError(f"expected num_buckets to be even (angular LSH uses [xR ; -xR]), got {num_buckets}")
        self.num_hashes = check_int("num_hashes", num_hashes, minimum=1)
        self.chunk = None if chunk is None else check_int("chunk", chunk, minimum=1)
        self.causal = check_bool("causal", causal)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if self.dropout == 1.0:
            raise ValueError("expected dropout < 1, got 1.0")
        self.fixed_rotations = _check_seed(seed) is not None
        self.qk_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # Evaluation (and, with a seed, training) rotations: persistent, so a saved model hashes
        # the same way after loading.
        self.register_buffer("hash_seeds", head_seeds(seed, self.num_heads))
        self._layout_key, self._layout = None, None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_projections(self.qk_proj, self.v_proj, self.out_proj)

    def _seeds(self) -> list[int]:
        if self.training and not self.fixed_rotations:
            return torch.randint(0, _SEED_LIMIT, (self.num_heads,)).tolist()
        return self.hash_seeds.tolist()

    def _buckets(self, vectors: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Bucket ids ``[B, H, num_hashes, N]`` of the detached shared-QK vectors ``[B, N, H, D]``:
        :func:`graphattn.rules.hashing.lsh_buckets` per head, the head's rotations shared by the batch."""
        B, N, H, D = vectors.shape
        per_head = [lsh_buckets(vectors[:, :, h].reshape(B * N, D), num_buckets=self.num_buckets,
                                num_hashes=self.num_hashes, seed=seeds[h]).view(-1, B, N) for h in range(H)]
        return torch.stack(per_head).permute(2, 0, 1, 3)

    def _graph_edges(self, buckets: torch.Tensor):
        """Slot edges of every (sample, head) graph, the graph of :func:`rules.lsh` (exact or
        chunked, no self-loop unless it is a query's only key; causal filtered), and the engine's
        row order. Edges may repeat across hash rounds. Returns (key_slot, query_slot, order)."""
        B, H, R, N = buckets.shape
        device = buckets.device
        cpu = buckets.cpu()
        keys, queries = [], []
        for b in range(B):
            for h in range(H):
                offset = (b * H + h) * N
                for r in range(R):  # the edge builders of rules.lsh, round by round
                    key, query = (_exact_edges(cpu[b, h, r], self.num_buckets) if self.chunk is None
                                  else _chunked_edges(cpu[b, h, r], self.num_buckets, self.chunk))
                    other = key != query
                    keys.append(key[other] + offset)
                    queries.append(query[other] + offset)
        key, query = torch.cat(keys).to(device), torch.cat(queries).to(device)
        key, query = add_lonely_self_loops(key, query, B * H * N)  # rules.lsh: only key -> itself
        if self.causal:
            keep = key <= query
            key, query = add_lonely_self_loops(key[keep], query[keep], B * H * N)
        # Row order: (sample, head, bucket of the first round, position); a bucket is a run of rows.
        bh = torch.arange(B * H, device=device).view(B, H, 1)
        code = (bh * self.num_buckets + buckets[:, :, 0]) * N + torch.arange(N, device=device)
        return key, query, torch.sort(code.reshape(-1)).indices

    def _chunk_layout(self, BH: int, N: int, device) -> AttentionGraph:
        """The chunked graph in sorted coordinates, which is the same every forward: ``BH``
        blocks of ``N`` rows, row ``p`` attending the rows of its chunk and of the chunk before
        it (wrap-around). Non-causal with ``N >= 2`` every row has another key there, so the
        layout is exactly Reformer's graph and leaves out the diagonal; otherwise it keeps the
        diagonal and a per-forward bias trims it. Cached (with its tiling plan) for the last
        shape, so the engine plans it once."""
        with_self = self.causal or N == 1
        key = (BH, N, str(device), with_self)
        if self._layout_key != key:
            k, q = _chunked_edges(torch.zeros(N, dtype=torch.int64), 1, self.chunk)  # order = identity
            if not with_self:
                k, q = k[k != q], q[k != q]
            off = torch.arange(BH)[:, None] * N
            ei = torch.stack([(k + off).reshape(-1), (q + off).reshape(-1)])
            self._layout = AttentionGraph.from_edge_index(ei, BH * N).to(device)
            self._layout_key = key
        return self._layout

    def _sorted_chunks(self, q, k, v, buckets, dropout_p: float, want_edges: bool):
        """One hash round, chunked: attention over the cached layout in (bucket, position) order.
        Non-causal, the layout is Reformer's graph itself. Causal, a per-forward ``-inf`` bias
        removes later tokens and a token itself unless it has no other key.
        Returns (out [B, N, H, D], key_slot, query_slot of the edges used, or None, None unless
        ``want_edges``)."""
        B, N, H, D = q.shape
        S = B * H * N
        device = q.device
        bh = torch.arange(B * H, device=device).view(B, H, 1)
        order = torch.sort(((bh * self.num_buckets + buckets[:, :, 0]) * N
                            + torch.arange(N, device=device)).reshape(-1)).indices  # row -> slot
        layout = self._chunk_layout(B * H, N, device)
        kr, qr = layout.edge_index
        ks = qs = bias = None
        if self.causal or want_edges:
            ks, qs = order[kr], order[qr]  # slots of one (sample, head) block: compare as tokens
        if self.causal:
            allowed = ks < qs
            has_other = torch.zeros(S, dtype=torch.bool, device=device)
            has_other[qr[allowed]] = True
            keep = allowed | ((kr == qr) & ~has_other[qr])
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            bias = torch.zeros(kr.numel(), 1, dtype=acc, device=device).masked_fill_(~keep[:, None], float("-inf"))
            ks, qs = (ks[keep], qs[keep]) if want_edges else (None, None)
        qf, kf, vf = fold_heads(q)[order], fold_heads(k)[order], fold_heads(v)[order]
        out = graph_attention(qf, kf, vf, layout, bias=bias, scale=1.0, dropout_p=dropout_p)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(S, device=device)
        out = out[rank].view(B, H, N, D).permute(0, 2, 1, 3)
        return out, ks, qs

    def forward(self, x: torch.Tensor, *, return_graph: bool = False):
        x, batched = check_input(x, self.embed_dim)
        B, N, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.qk_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        k = nn.functional.normalize(q, dim=-1, eps=_EPS)
        seeds = self._seeds()  # outside recorded(): a replay draws from the RNG exactly as the forward
        buckets = recorded(lambda: self._buckets(q.detach(), seeds))
        dropout_p = self.dropout if self.training else 0.0
        if self.chunk is not None and self.num_hashes == 1:
            out, key, query = self._sorted_chunks(q, k, v, buckets, dropout_p, return_graph)
        else:
            key, query, order = self._graph_edges(buckets)
            out = routed_attention(q, k, v, key, query, q_order=order, k_order=order, scale=1.0,
                                   dropout_p=dropout_p, unique=True)
        return routed_output(self.out_proj, out, key, query, batched, return_graph, EdgeLabel.BUCKET)

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"num_hashes={self.num_hashes}, chunk={self.chunk}, causal={self.causal}, "
                f"fixed_rotations={self.fixed_rotations}, dropout={self.dropout}")
