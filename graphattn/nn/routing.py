"""Routing Transformer attention: balanced spherical k-means routing with EMA centroids."""

from __future__ import annotations

import math

import torch
from torch import nn

from graphattn._validate import check_bool, check_features, check_float, check_heads, check_int, renamed_parameters
from graphattn.graph import EdgeLabel
from graphattn.nn._routed import (attend_self_where_keyless, block_attention, fold_heads, merge_rows,
                                  routed_output, unfold_heads)
from graphattn.nn.attention import reset_projections
from graphattn.nn._replay import recorded
from graphattn.nn.lsh import _check_seed, head_seeds
from graphattn.rules.clustering import spherical_kmeans

__all__ = ["RoutingAttention"]

_EPS = 1e-12
_SIM_CELLS = 1 << 24  # similarities per chunk of centroids (64 MiB in fp32)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(t, dim=-1, eps=_EPS)


def _top_members_with_ties(sim: torch.Tensor, w: int) -> torch.Tensor:
    """``_top_members`` for rows whose ``w``-th largest value is tied past the cut: the values
    above the ``w``-th largest, then its ties by lowest position (one pass over the rows)."""
    t = sim.topk(w, dim=-1).values[..., -1:]  # the w-th largest value of each row
    above = sim > t
    tied = sim == t
    need = w - above.sum(-1, keepdim=True)  # ties to take, lowest positions first
    chosen = above | (tied & (torch.cumsum(tied, dim=-1) <= need))
    # exactly w per row: nonzero lists them row by row, positions increasing
    return torch.nonzero(chosen)[:, -1].view(*sim.shape[:-1], w)


def _top_members(sim: torch.Tensor, w: int) -> torch.Tensor:
    """Per row of ``sim`` ``[..., N]``, the positions of its ``w`` largest values, ties to the
    lower position (the set a stable descending sort would put first), as ``[..., w]`` in
    increasing position order. One ``topk`` of ``w + 1`` per row, no sort of the rows: the
    ``w + 1``-th value tells whether the ``w`` chosen are the only possible set; the rows where a
    tie crosses the cut (equal similarities, e.g. repeated tokens) are redone tie-exactly."""
    N = sim.shape[-1]
    if w == N:
        return torch.arange(w, device=sim.device).expand(*sim.shape[:-1], w)
    vals, idx = sim.topk(w + 1, dim=-1)  # descending
    members = idx[..., :w]
    crossing = vals[..., w - 1] == vals[..., w]
    if bool(crossing.any()):
        members = members.clone()
        members[crossing] = _top_members_with_ties(sim[crossing], w)
    return members.sort(dim=-1).values


def _earlier_memberships(members: torch.Tensor):
    """For ``members`` ``[K, w]`` (the tokens of ``K`` clusters; a token at most once per
    cluster), every pair (slot, earlier cluster): slot ``s`` (flat into ``[K * w]``) holds a token
    that cluster ``c' < s // w`` holds too. Returns ``(slot, c')``, ``sum_t m_t (m_t - 1) / 2``
    pairs for a token in ``m_t`` clusters: no cluster x cluster product."""
    K, w = members.shape
    device = members.device
    cluster = torch.arange(K, device=device).repeat_interleave(w)
    token = members.reshape(-1)
    order = torch.sort(token * K + cluster).indices  # slots by (token, cluster)
    t = token[order]
    pos = torch.arange(t.numel(), device=device)
    first = torch.ones_like(t, dtype=torch.bool)
    first[1:] = t[1:] != t[:-1]
    run_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    rank = pos - run_start  # earlier clusters of the slot at this sorted position
    total = int(rank.sum())
    later = order.repeat_interleave(rank, output_size=total)
    offset = torch.arange(total, device=device) - (torch.cumsum(rank, 0) - rank).repeat_interleave(rank, output_size=total)
    earlier = order[run_start.repeat_interleave(rank, output_size=total) + offset]
    return later, cluster[earlier]


def _bits(slot: torch.Tensor, bit: torch.Tensor, num_slots: int, words: int, dtype=torch.int64) -> torch.Tensor:
    """``[num_slots, words]`` bitsets (words of ``dtype``: uint8, int16, int32 or int64) with bit
    ``bit[e]`` set in row ``slot[e]`` (pairs unique)."""
    width = torch.iinfo(dtype).bits
    out = torch.zeros(num_slots * words, dtype=dtype, device=slot.device)
    value = torch.bitwise_left_shift(torch.ones_like(bit), bit % width).to(dtype)  # 2^(width-1) wraps to the sign bit
    return out.index_add_(0, slot * words + bit // width, value).view(num_slots, words)  # distinct bits: + is |


def _duplicate_mask(q_members: torch.Tensor, k_members: torch.Tensor) -> torch.Tensor | None:
    """bool ``[K, w, w]``: query slot ``p`` and key slot ``s`` of cluster ``c`` form a pair that
    an earlier cluster ``c' < c`` holds too (its query set holds the query token and its key set
    the key token), so cluster ``c`` leaves it out and every pair of the union graph is attended
    once. None when no pair repeats.

    Per cluster ``c``, the earlier clusters that share a query with it are numbered (bit
    positions); each query slot gets the bitset of its token's earlier clusters, each key slot
    the bitset of its token's earlier key clusters among them, and a pair repeats exactly when
    the two bitsets meet. Cost: the token memberships (``sum m^2``) and one AND per pair."""
    K, w = q_members.shape
    q_slot, q_earlier = _earlier_memberships(q_members)
    if q_slot.numel() == 0:  # no query in two clusters
        return None
    k_slot, k_earlier = _earlier_memberships(k_members)
    if k_slot.numel() == 0:
        return None
    uniq, inv = torch.unique((q_slot // w) * K + q_earlier, return_inverse=True)  # (cluster, earlier) pairs
    owner = uniq // K
    bit_of = torch.arange(uniq.numel(), device=uniq.device) - torch.searchsorted(owner, owner)
    code = (k_slot // w) * K + k_earlier
    at = torch.searchsorted(uniq, code).clamp_max(uniq.numel() - 1)
    shared = uniq[at] == code  # key memberships among the cluster's numbered earlier clusters
    if not bool(shared.any()):
        return None
    # The narrowest words that hold a cluster's numbered earlier clusters: the pair test below
    # reads K * w * w words.
    nbits = int(bit_of.max()) + 1
    dtype = next((t for t in (torch.uint8, torch.int16, torch.int32) if nbits <= torch.iinfo(t).bits), torch.int64)
    words = -(-nbits // torch.iinfo(dtype).bits)
    qb = _bits(q_slot, bit_of[inv], K * w, words, dtype).view(K, w, words)
    kb = _bits(k_slot[shared], bit_of[at[shared]], K * w, words, dtype).view(K, w, words)
    mask = None
    for word in range(words):  # one word unless a cluster shares queries with over 64 earlier ones
        meet = torch.bitwise_and(qb[:, :, None, word], kb[:, None, :, word]) != 0
        mask = meet if mask is None else mask.logical_or_(meet)
    return mask


class RoutingAttention(nn.Module):
    r"""Routing Transformer self-attention (Roy, Saffar, Vaswani and Grangier, "Efficient
    Content-Based Sparse Attention with Routing Transformers", TACL 2021).

    Each head ``h`` keeps ``num_clusters`` unit centroids ``\mu_{h,c}`` (buffer ``centroids``
    ``[H, C, D]``). Queries ``q = W_q^h x`` and keys ``k = W_k^h x`` are routed by their unit
    directions ``\hat q, \hat k``. Balanced routing: cluster ``c`` keeps the ``cluster_size`` queries
    ``Q_c`` and the ``cluster_size`` keys ``K_c`` of largest cosine similarity to ``\mu_{h,c}`` (ties:
    lower position), whatever their nearest centroid. Query ``i`` attends the keys of every
    cluster whose query set holds it,

    .. math::
        \mathbf{x}'_i = W_o \Big\Vert_{h} \sum_{j \in \mathcal{N}_h(i)}
        \operatorname{softmax}_j\Big(\frac{q_i^\top k_j}{\sqrt{d}}\Big) W_v^h x_j, \qquad
        \mathcal{N}_h(i) = \bigcup_{c:\, i \in Q_c} K_c ,

    and a token in no ``Q_c`` attends itself, so no row is empty (never a zero or NaN row).
    ``cluster_size`` defaults to ``ceil(N / num_clusters)`` and is capped at ``N``. ``causal=True``
    keeps keys ``j <= i`` and gives a query left without keys its self-loop. As in the paper,
    which earlier keys a query sees can depend on later tokens through the top-``cluster_size``
    selection; the gradient path of every output only reaches keys ``j <= i``.

    Centroids. Before any centroid exists, the first batch seen (training or evaluation) seeds
    them: per head, spherical k-means with k-means++ seeding (:func:`graphattn.rules.clustering.spherical_kmeans`,
    ``init_iters`` Lloyd steps) over that batch's unit queries and keys; ``seed`` (int,
    ``torch.Generator`` or None for torch's default generator) is its only randomness. The buffer
    ``initialized`` records this, so evaluation before training works. In training, after routing,
    each unit query and key is assigned to its nearest centroid and every centroid with at least
    one point moves by an exponential moving average toward the normalised mean of its points:
    ``\mu \leftarrow \mathrm{normalise}(\lambda \mu + (1 - \lambda)\, \bar x / \lVert \bar x
    \rVert)`` with ``\lambda = ema_decay``. Evaluation never moves them.

    Commitment loss. Each training forward sets ``last_commitment_loss``: ``commitment`` times the
    mean, over heads, tokens and both queries and keys, of the squared distance
    ``\lVert \hat q - \mu_{a(q)} \rVert^2`` to the nearest (detached) centroid. It is differentiable
    with respect to the projections; add it to the training loss to pull queries and keys toward
    their centroids. It is None after an evaluation forward. (Inside a
    :class:`~graphattn.nn.ReversibleSequence` the forward runs without autograd, so the loss
    carries no gradient there.)

    Computation, with no graph built per forward: the members of every cluster are gathered into
    a run of ``cluster_size`` query rows and one of ``cluster_size`` key rows, so every cluster of
    every sample and head is a dense ``cluster_size x cluster_size`` block, attended by batched
    matmuls that also return each row's log-sum-exp (:func:`graphattn.nn._routed.block_attention`);
    the clusters of a query are merged by the log-sum-exp rule. A (query, key) pair that several
    of a query's clusters hold is attended in the first of them only (masked in the others, as
    are later keys under ``causal``), so the result is exactly the attention over the union
    graph above.
    Routing: one ``topk`` per centroid over the similarities (computed in chunks of centroids),
    no sort of the tokens. Work: ``B * H * C * cluster_size**2`` scores (about
    ``N * cluster_size`` per head at the default cluster size, ``N**2 / C``) and
    ``B * H * C * N`` similarities.

    Args:
        embed_dim: model width ``E`` (= ``num_heads * head_dim``).
        num_heads: attention heads ``H``.
        num_clusters: centroids per head ``C`` (the first batch must hold at least ``C`` queries
            and keys per head in all, ``2 * B * N >= C``).
        cluster_size: queries and keys kept per cluster (default ``ceil(N / C)``).
        ema_decay: ``\lambda`` in ``[0, 1]``.
        commitment: weight of the commitment loss (>= 0).
        causal: keep only keys at or before the query.
        seed: randomness of the k-means++ initialisation.
        init_iters: Lloyd iterations of the initialisation.
        dropout: dropout on the attention probabilities (training only).
        bias: whether the projections have biases.

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]``
        - **output**: like ``x``; with ``return_graph=True`` also the graphs used (an
          :class:`~graphattn.AttentionGraph` over ``N`` tokens with a per-head layout, or a list of
          ``B`` of them for batched input)

    >>> layer = RoutingAttention(16, 2, num_clusters=3, seed=0).eval()
    >>> out = layer(torch.randn(12, 16))  # evaluation before training: k-means++ from this batch
    >>> out.shape, bool(layer.initialized), bool(out.isfinite().all())
    (torch.Size([12, 16]), True, True)
    """

    @renamed_parameters(window="cluster_size")
    def __init__(self, embed_dim: int, num_heads: int, *, num_clusters: int, cluster_size: int | None = None,
                 ema_decay: float = 0.999, commitment: float = 1e-4, causal: bool = False, seed=None,
                 init_iters: int = 10, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = check_heads(embed_dim, num_heads)
        self.num_clusters = check_int("num_clusters", num_clusters, minimum=1)
        self.cluster_size = None if cluster_size is None else check_int("cluster_size", cluster_size, minimum=1)
        self.ema_decay = check_float("ema_decay", ema_decay, minimum=0.0, maximum=1.0)
        self.commitment = check_float("commitment", commitment, minimum=0.0)
        self.causal = check_bool("causal", causal)
        self.seed = _check_seed(seed)
        self.init_iters = check_int("init_iters", init_iters, minimum=0)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if self.dropout == 1.0:
            raise ValueError("expected dropout < 1, got 1.0")
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.register_buffer("centroids", torch.zeros(self.num_heads, self.num_clusters, self.head_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.last_commitment_loss: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the projections and forget the centroids (the next batch re-seeds them)."""
        reset_projections(self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        self.centroids.zero_()
        self.initialized.fill_(False)

    @torch.no_grad()
    def _initialise(self, qn: torch.Tensor, kn: torch.Tensor) -> None:
        """k-means++ seeded spherical k-means per head over the batch's unit queries and keys."""
        B, N, H, D = qn.shape
        if 2 * B * N < self.num_clusters:
            raise ValueError(f"expected the first batch to hold at least num_clusters = {self.num_clusters} "
                             f"queries and keys per head (2 * B * N), got {2 * B * N}")
        seeds = head_seeds(self.seed, H).tolist()
        for h in range(H):
            points = torch.cat([qn[:, :, h].reshape(-1, D), kn[:, :, h].reshape(-1, D)])
            c, _ = spherical_kmeans(points, num_clusters=self.num_clusters, iters=self.init_iters, seed=seeds[h])
            self.centroids[h] = c.to(self.centroids.dtype)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, points: torch.Tensor, assign: torch.Tensor) -> None:
        """points ``[H, M, D]`` unit, assign ``[H, M]`` nearest centroid ids."""
        H, M, D = points.shape
        C = self.num_clusters
        sums = torch.zeros(H, C, D, dtype=points.dtype, device=points.device)
        sums.scatter_add_(1, assign[..., None].expand(H, M, D), points)
        counts = torch.zeros(H, C, dtype=points.dtype, device=points.device)
        counts.scatter_add_(1, assign, torch.ones_like(assign, dtype=points.dtype))
        old = self.centroids.to(points.dtype)
        moved = _unit(self.ema_decay * old + (1.0 - self.ema_decay) * _unit(sums))
        # Empty clusters (and means that cancel out) keep their centroid.
        keep = (counts > 0) & (sums.norm(dim=-1) > _EPS)
        self.centroids.copy_(torch.where(keep[..., None], moved, old))

    def _route(self, qn: torch.Tensor, kn: torch.Tensor, cent: torch.Tensor):
        """Routing decisions of unit ``qn``, ``kn`` ``[B, N, H, D]`` against ``cent`` ``[H, C, D]``:
        the balanced sets ``q_sets``, ``k_sets`` ``[B, H, C, w]`` (per cluster the ``w`` most
        similar queries / keys, ties to the lower position, in increasing position) and the
        nearest centroids ``q_assign``, ``k_assign`` ``[B, H, N]`` (ties to the lower id; None
        in evaluation, which moves no centroid). Similarities ``[B, H, C, N]`` are computed a
        chunk of centroids at a time."""
        B, N, H, D = qn.shape
        C = self.num_clusters
        w = min(self.cluster_size if self.cluster_size is not None else -(-N // C), N)
        # Queries and keys side by side, [B, H, D, 2N]: one similarity matmul and one assignment
        # pass for both.
        pts = torch.empty(B, H, D, 2 * N, dtype=qn.dtype, device=qn.device)
        pts[..., :N] = qn.permute(0, 2, 3, 1)
        pts[..., N:] = kn.permute(0, 2, 3, 1)
        step = max(1, _SIM_CELLS // (B * H * 2 * N))
        q_sets, k_sets, best, assign = [], [], None, None
        for c0 in range(0, C, step):
            sim = torch.matmul(cent[:, c0:c0 + step], pts)  # [B, H, c, 2N]
            q_sets.append(_top_members(sim[..., :N], w))
            k_sets.append(_top_members(sim[..., N:], w))
            if not self.training:
                continue
            top, arg = sim.max(dim=2)  # first maximum: ties to the lower id
            if best is None:
                best, assign = top, arg
            else:  # strictly better only, so ties keep the lower id
                better = top > best
                best, assign = torch.where(better, top, best), torch.where(better, arg + c0, assign)
        q_assign, k_assign = (None, None) if assign is None else (assign[..., :N], assign[..., N:])
        return torch.cat(q_sets, dim=2), torch.cat(k_sets, dim=2), q_assign, k_assign

    def _cluster_attention(self, q, k, v, q_sets, k_sets, dropout_p: float, want_edges: bool):
        """Attention of ``q``, ``k``, ``v`` ``[B, N, H, D]`` over the routing graph of the sets
        ``[B, H, C, w]``: every cluster a dense block, the clusters of a token merged. Returns ``out [B, N, H, D]`` and, when ``want_edges``, a function giving the
        graph's (key, query) token-slot edges."""
        B, N, H, D = q.shape
        _, _, C, w = q_sets.shape
        K = B * H * C
        tok = (torch.arange(B * H, device=q.device) * N).view(B, H, 1, 1)
        q_tok, k_tok = (q_sets + tok).view(K, w), (k_sets + tok).view(K, w)  # token slots
        mask = _duplicate_mask(q_tok, k_tok)
        if self.causal:
            later = q_sets.view(K, w, 1) < k_sets.view(K, 1, w)
            mask = later if mask is None else mask.logical_or_(later)
        qf, kf, vf = fold_heads(q), fold_heads(k), fold_heads(v)
        rows = lambda t, idx: t.view(-1, D).index_select(0, idx.view(-1)).view(K, w, D)  # noqa: E731
        out, lse = block_attention(rows(qf, q_tok), rows(kf, k_tok), rows(vf, k_tok), mask, 1.0 / math.sqrt(D),
                                   dropout_p)
        out, lse = out.view(K * w, 1, D), lse.view(K * w, 1)
        out, lse = merge_rows(out, lse, q_tok.view(-1), B * H * N)
        out = unfold_heads(attend_self_where_keyless(out, lse, vf, dropout_p), B, N, H)
        if not want_edges:
            return out, None

        def edges():
            keep = torch.ones(K, w, w, dtype=torch.bool, device=q.device) if mask is None else ~mask
            key = k_tok[:, None, :].expand(K, w, w)[keep]
            query = q_tok[:, :, None].expand(K, w, w)[keep]
            alone = torch.nonzero(lse.view(-1) == float("-inf")).flatten()
            return torch.cat([key, alone]), torch.cat([query, alone])

        return out, edges

    def forward(self, x: torch.Tensor, *, return_graph: bool = False):
        x, batched = check_features(x, self.embed_dim, min_tokens=1)
        B, N, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, D)
        k = self.k_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        qu, ku = _unit(q), _unit(k)  # differentiable for the commitment loss; routed detached
        qn, kn = qu.detach(), ku.detach()
        if not bool(self.initialized):
            self._initialise(qn, kn)
        cent = self.centroids.to(qn.dtype)
        q_sets, k_sets, q_assign, k_assign = recorded(lambda: self._route(qn, kn, cent))
        out, edges = self._cluster_attention(q, k, v, q_sets, k_sets, self.dropout if self.training else 0.0,
                                             return_graph)
        if self.training:
            q_assign, k_assign = q_assign.permute(0, 2, 1), k_assign.permute(0, 2, 1)  # [B, N, H]
            # Commitment: squared distance of the (differentiable) unit vectors to their centroid.
            heads = torch.arange(H, device=x.device)
            dq = (qu - cent[heads, q_assign]).pow(2).sum(-1)  # [B, N, H]
            dk = (ku - cent[heads, k_assign]).pow(2).sum(-1)
            self.last_commitment_loss = self.commitment * 0.5 * (dq.mean() + dk.mean())
            points = torch.cat([qn.permute(2, 0, 1, 3).reshape(H, B * N, D),
                                kn.permute(2, 0, 1, 3).reshape(H, B * N, D)], dim=1)
            self._ema_update(points, torch.cat([q_assign.permute(2, 0, 1).reshape(H, B * N),
                                                k_assign.permute(2, 0, 1).reshape(H, B * N)], dim=1))
        else:
            self.last_commitment_loss = None
        return routed_output(self.out_proj, out, batched, edges, EdgeLabel.CLUSTER)

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, num_clusters={self.num_clusters}, "
                f"cluster_size={self.cluster_size}, ema_decay={self.ema_decay}, commitment={self.commitment}, "
                f"causal={self.causal}, dropout={self.dropout}")
