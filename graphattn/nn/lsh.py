"""Reformer LSH self-attention as a layer over per-head :func:`rules.lsh` graphs."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from graphattn._random import seed_key
from graphattn._validate import check_bool, check_features, check_float, check_heads, check_int
from graphattn.graph import EdgeLabel
from graphattn.nn._routed import (attend_self_where_keyless, block_layout, cached_layout, fold_heads,
                                  routed_output, unfold_heads)
from graphattn.nn.attention import reset_projections
from graphattn.nn.functional import _trust_edge_index, graph_attention, merge_attention
from graphattn.nn._replay import recorded
from graphattn.rules.hashing import lsh_buckets

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


def _chunk_window(N: int, chunk: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reformer's chunked graph over ``N`` rows in sorted order: row ``p`` attends the rows of
    its chunk (``p // chunk``) and of the chunk before it (the first chunk looks back to the
    last), itself excepted. Returns (key, query) rows, unique and sorted by (query, key)."""
    num_chunks = -(-N // chunk)
    p = torch.arange(N, device=device)
    own = p // chunk
    prev = torch.remainder(own - 1, num_chunks)
    offsets = torch.arange(chunk, device=device)
    cand = torch.cat([prev[:, None] * chunk + offsets, own[:, None] * chunk + offsets], dim=1)  # [N, 2 chunk]
    if num_chunks == 1:  # the previous chunk is the chunk itself
        cand = cand[:, chunk:]
    valid = (cand < N) & (cand != p[:, None])
    cand = torch.where(valid, cand, torch.full_like(cand, N)).sort(dim=1).values  # first chunk: its own, then the last
    query = p[:, None].expand_as(cand)
    keep = cand < N
    return cand[keep], query[keep]


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

    Computation: every hash round is its own attention, and the rounds are merged by the
    log-sum-exp rule (:func:`graphattn.nn.functional.merge_attention`). A pair that several
    rounds hold is attended in the first of them only (a ``-inf`` bias, or the edge left out, in
    the later ones): Reformer's duplicate correction in exact form, so the result is exactly the
    attention over the union graph above. Tokens are laid out in (bucket, position) order of
    each round, where buckets and chunks are contiguous runs of rows. With ``chunk`` the graph
    in that order is the same every forward (chunk and previous chunk), for every sample, head
    and round: one layout, built once per shape (shared by the layers of a model) with its
    tiling plan cached, and one engine call (:func:`graphattn.nn.functional.graph_attention`
    with ``return_lse=True``, heads and rounds folded into the rows) per forward; causal masking
    and duplicates are a per-forward ``-inf`` bias on it. Exact buckets (``chunk=None``) have
    sizes that change every forward, so their edge list and plan are built every forward (one
    for all rounds). Work: ``num_hashes * N * (2 chunk - 1)`` scores per head with ``chunk``.

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

    def _sorted_rows(self, buckets: torch.Tensor):
        """Rows of the engine call for ``buckets`` ``[B, H, R, N]``: round ``r`` of sample ``b``,
        head ``h`` owns rows ``((b * H + h) * R + r) * N + p``, tokens in (bucket, position)
        order. Returns ``tokens`` ``[B * H, R, N]`` (the token at each row) and ``rank``
        ``[B * H, R, N]`` (the row of each token within its round)."""
        B, H, R, N = buckets.shape
        device = buckets.device
        block = torch.arange(B * H * R, device=device).view(B, H, R, 1)
        code = (block * self.num_buckets + buckets) * N + torch.arange(N, device=device)
        tokens = (torch.sort(code.reshape(-1)).indices % N).view(B * H, R, N)
        rank = torch.empty_like(tokens).scatter_(2, tokens, torch.arange(N, device=device).expand_as(tokens))
        return tokens, rank

    def _chunk_bias(self, tokens: torch.Tensor, rank: torch.Tensor, key_row: torch.Tensor, query_row: torch.Tensor):
        """bool ``[B * H, R, E]`` over the edges (``key_row``, ``query_row`` within a block) of
        the chunk layout: True where round ``r``'s pair is masked, being a later key under
        ``causal`` or held by an earlier round too. None when nothing is masked."""
        G, R, N = tokens.shape
        c = self.chunk
        num_chunks = -(-N // c)
        small = torch.int32 if N < 2**31 else torch.int64
        rounds = []
        for r in range(R):
            mask = None
            if self.causal:
                t = tokens[:, r].to(small)
                mask = t[:, key_row] > t[:, query_row]
            if r:
                # chunk, in each earlier round, of the token at each row of round r
                earlier = torch.gather(rank[:, :r], 2, tokens[:, r:r + 1].expand(G, r, N)).div_(c, rounding_mode="floor")
                earlier = earlier.to(small)
                for e in range(r):
                    gap = torch.remainder(earlier[:, e][:, query_row] - earlier[:, e][:, key_row], num_chunks)
                    held = gap <= 1  # the key's chunk is the query's or the one before it (cyclic)
                    mask = held if mask is None else mask.logical_or_(held)
            rounds.append(mask)
        if all(m is None for m in rounds):
            return None
        return torch.stack([torch.zeros(G, key_row.numel(), dtype=torch.bool, device=tokens.device)
                            if m is None else m for m in rounds], dim=1)

    def _chunk_attention(self, q, k, v, buckets, dropout_p: float, want_edges: bool):
        """Chunked rounds on the cached layout, merged. Returns ``out [B, N, H, D]`` and, when
        ``want_edges``, a function giving the union graph's (key, query) token-slot edges."""
        B, N, H, D = q.shape
        R = self.num_hashes
        G = B * H
        tokens, rank = self._sorted_rows(buckets)
        layout = cached_layout(("lsh-chunks", G * R, N, self.chunk, str(q.device)),
                               lambda: block_layout(G * R, N, *_chunk_window(N, self.chunk, q.device)))
        per_block = layout.edge_index.shape[1] // (G * R)
        key_row, query_row = layout.edge_index[:, :per_block]  # block 0's edges: rows within a block
        mask = self._chunk_bias(tokens, rank, key_row, query_row)  # [G, R, E]
        bias = None
        if mask is not None:
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            bias = torch.zeros(mask.numel(), 1, dtype=acc, device=q.device).masked_fill_(mask.view(-1, 1), float("-inf"))
        slot = (tokens + (torch.arange(G, device=q.device) * N).view(G, 1, 1)).view(-1)  # token slot of each row
        out, lse = self._merged_rounds(q, k, v, slot, layout, bias, rank, dropout_p)
        if not want_edges:
            return out, None

        def edges():
            block_slot = slot.view(G * R, N)
            keep = torch.ones(G * R, key_row.numel(), dtype=torch.bool, device=q.device) if mask is None \
                else ~mask.view(G * R, -1)
            key, query = block_slot[:, key_row][keep], block_slot[:, query_row][keep]
            alone = torch.nonzero(lse.view(-1) == float("-inf")).flatten()
            return torch.cat([key, alone]), torch.cat([query, alone])

        return out, edges

    def _bucket_attention(self, q, k, v, buckets, dropout_p: float, want_edges: bool):
        """Exact buckets: per round, every pair of a bucket (a run of rows) except the token
        itself, later keys dropped under ``causal`` and pairs held by an earlier round dropped;
        one edge list and plan for all rounds, merged. Returns like :meth:`_chunk_attention`."""
        B, N, H, D = q.shape
        R = self.num_hashes
        G = B * H
        device = q.device
        tokens, rank = self._sorted_rows(buckets)
        rows = G * R * N
        bucket = buckets.reshape(G, R, N)
        # bucket id (with its block) of each row, to find the runs
        block_bucket = torch.gather(bucket, 2, tokens) + torch.arange(G * R, device=device).view(G, R, 1) * self.num_buckets
        _, size = torch.unique_consecutive(block_bucket.view(-1), return_counts=True)
        run_start = torch.cumsum(size, 0) - size
        per_row = size.repeat_interleave(size)  # each row's run size
        start = run_start.repeat_interleave(size)
        num_pairs = int(per_row.sum())
        query = torch.arange(rows, device=device).repeat_interleave(per_row, output_size=num_pairs)
        first = torch.cumsum(per_row, 0) - per_row
        key = start[query] + torch.arange(num_pairs, device=device) - first[query]
        keep = key != query
        flat_tokens = tokens.reshape(-1)
        if self.causal:
            keep &= flat_tokens[key] < flat_tokens[query]
        if R > 1:
            round_of = (query // N) % R
            # bucket, in each round, of the token at each row
            bucket_at = torch.gather(bucket, 2, tokens.view(G, 1, R * N).expand(G, R, R * N))  # [G, R', R*N]
            for e in range(R - 1):
                b_e = bucket_at[:, e].reshape(-1)
                keep &= ~((round_of > e) & (b_e[key] == b_e[query]))
        edge_index = torch.stack([key[keep], query[keep]])  # sorted by (query, key), unique
        _trust_edge_index(edge_index, rows, rows)
        slot = (tokens + (torch.arange(G, device=device) * N).view(G, 1, 1)).view(-1)
        out, lse = self._merged_rounds(q, k, v, slot, edge_index, None, rank, dropout_p)
        if not want_edges:
            return out, None

        def edges():
            alone = torch.nonzero(lse.view(-1) == float("-inf")).flatten()
            return torch.cat([slot[edge_index[0]], alone]), torch.cat([slot[edge_index[1]], alone])

        return out, edges

    def _merged_rounds(self, q, k, v, slot, graph, bias, rank, dropout_p: float):
        """One engine call over the rows (``slot``: the token slot of each row), the rounds
        merged per token; a token without keys attends itself. Returns (``out [B, N, H, D]``,
        ``lse [B * H * N, 1]``)."""
        B, N, H, D = q.shape
        G, R = B * H, self.num_hashes
        qf, kf, vf = fold_heads(q), fold_heads(k), fold_heads(v)
        out, lse = graph_attention(qf[slot], kf[slot], vf[slot], graph, bias=bias, scale=1.0,
                                   dropout_p=dropout_p, return_lse=True)
        # Back to token slots, one part per round: the row of token t in round r.
        row = (rank + (torch.arange(G * R, device=q.device) * N).view(G, R, 1)).transpose(0, 1).reshape(R, G * N)
        if R == 1:
            out, lse = out[row[0]], lse[row[0]]
        else:
            out, lse = merge_attention([out[row[r]] for r in range(R)], [lse[row[r]] for r in range(R)])
        return unfold_heads(attend_self_where_keyless(out, lse, vf, dropout_p), B, N, H), lse

    def forward(self, x: torch.Tensor, *, return_graph: bool = False):
        x, batched = check_features(x, self.embed_dim, min_tokens=1)
        B, N, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.qk_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        k = nn.functional.normalize(q, dim=-1, eps=_EPS)
        seeds = self._seeds()  # outside recorded(): a replay draws from the RNG exactly as the forward
        buckets = recorded(lambda: self._buckets(q.detach(), seeds))
        dropout_p = self.dropout if self.training else 0.0
        attend = self._bucket_attention if self.chunk is None else self._chunk_attention
        out, edges = attend(q, k, v, buckets, dropout_p, return_graph)
        return routed_output(self.out_proj, out, batched, edges, EdgeLabel.BUCKET)

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"num_hashes={self.num_hashes}, chunk={self.chunk}, causal={self.causal}, "
                f"fixed_rotations={self.fixed_rotations}, dropout={self.dropout}")
