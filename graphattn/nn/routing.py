"""Routing Transformer attention: balanced spherical k-means routing with EMA centroids."""

from __future__ import annotations

import math

import torch
from torch import nn

from graphattn._validate import check_bool, check_float, check_heads, check_int, renamed_parameters
from graphattn.graph import EdgeLabel
from graphattn.nn._routed import (add_lonely_self_loops, check_input, routed_attention,
                                  routed_output, slot_offsets)
from graphattn.nn.attention import reset_projections
from graphattn.nn._replay import recorded
from graphattn.nn.lsh import _check_seed, head_seeds
from graphattn.rules.clustering import spherical_kmeans

__all__ = ["RoutingAttention"]

_EPS = 1e-12


def _unit(t: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(t, dim=-1, eps=_EPS)


def _top_members(sim: torch.Tensor, w: int) -> torch.Tensor:
    """Per row of ``sim`` ``[..., N]``, the positions of its ``w`` largest values, ties to the
    lower position (the set a stable descending sort would put first), as ``[..., w]`` in
    increasing position order. A selection (``topk`` for the threshold, then the lowest-position
    ties), not a sort of every row."""
    if w == sim.shape[-1]:
        return torch.arange(w, device=sim.device).expand(*sim.shape[:-1], w)
    t = sim.topk(w, dim=-1).values[..., -1:]  # the w-th largest value of each row
    above = sim > t
    tied = sim == t
    need = w - above.sum(-1, keepdim=True)  # ties to take, lowest positions first
    chosen = above | (tied & (torch.cumsum(tied, dim=-1) <= need))
    # exactly w per row: nonzero lists them row by row, positions increasing
    return torch.nonzero(chosen)[:, -1].view(*sim.shape[:-1], w)


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

    Computation: the ``B * H`` routing graphs run in one exact engine call, queries laid out by
    their nearest centroid and keys by theirs, so a cluster's edges fill dense tiles. Edges:
    ``C * cluster_size**2`` candidate pairs per head (about ``N**2 / C`` at the default cluster size).

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
        similar queries / keys, ties to the lower position) and the nearest centroids
        ``q_assign``, ``k_assign`` ``[B, H, N]``."""
        N = qn.shape[1]
        w = min(self.cluster_size if self.cluster_size is not None else -(-N // self.num_clusters), N)
        sim_q = torch.einsum("bnhd,hcd->bhcn", qn, cent)  # [B, H, C, N]
        sim_k = torch.einsum("bnhd,hcd->bhcn", kn, cent)
        return _top_members(sim_q, w), _top_members(sim_k, w), sim_q.argmax(2), sim_k.argmax(2)

    def _graph_edges(self, q_sets, k_sets, q_assign, k_assign, N: int):
        """Slot edges of every (sample, head) routing graph (pairs may repeat across clusters)
        and the engine row orders: (key, query, q_order, k_order)."""
        B, H, C, w = q_sets.shape
        device = q_sets.device
        query = q_sets[..., :, None].expand(B, H, C, w, w)
        key = k_sets[..., None, :].expand(B, H, C, w, w)
        off = slot_offsets(B, H, N, device)[:, :, None, None, None]
        if self.causal:
            keep = key <= query
            off = off.expand(B, H, C, w, w)[keep]
            key, query = key[keep] + off, query[keep] + off
        else:
            key, query = (key + off).reshape(-1), (query + off).reshape(-1)
        key, query = add_lonely_self_loops(key, query, B * H * N)
        # Row orders: tokens by (sample, head, nearest centroid, position).
        bh = torch.arange(B * H, device=device).view(B, H, 1)
        pos = torch.arange(N, device=device)
        q_order = torch.sort(((bh * C + q_assign) * N + pos).reshape(-1)).indices
        k_order = torch.sort(((bh * C + k_assign) * N + pos).reshape(-1)).indices
        return key, query, q_order, k_order

    def forward(self, x: torch.Tensor, *, return_graph: bool = False):
        x, batched = check_input(x, self.embed_dim)
        B, N, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, N, H, D)
        k = self.k_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        qn, kn = _unit(q.detach()), _unit(k.detach())
        if not bool(self.initialized):
            self._initialise(qn, kn)
        cent = self.centroids.to(qn.dtype)
        q_sets, k_sets, q_assign, k_assign = recorded(lambda: self._route(qn, kn, cent))
        key, query, q_order, k_order = self._graph_edges(q_sets, k_sets, q_assign, k_assign, N)
        q_assign, k_assign = q_assign.permute(0, 2, 1), k_assign.permute(0, 2, 1)  # [B, N, H]
        out = routed_attention(q, k, v, key, query, q_order=q_order, k_order=k_order,
                               scale=1.0 / math.sqrt(D), dropout_p=self.dropout if self.training else 0.0,
                               unique=True)
        if self.training:
            # Commitment: squared distance of the (differentiable) unit vectors to their centroid.
            heads = torch.arange(H, device=x.device)
            dq = (_unit(q) - cent[heads, q_assign]).pow(2).sum(-1)  # [B, N, H]
            dk = (_unit(k) - cent[heads, k_assign]).pow(2).sum(-1)
            self.last_commitment_loss = self.commitment * 0.5 * (dq.mean() + dk.mean())
            points = torch.cat([qn.permute(2, 0, 1, 3).reshape(H, B * N, D),
                                kn.permute(2, 0, 1, 3).reshape(H, B * N, D)], dim=1)
            self._ema_update(points, torch.cat([q_assign.permute(2, 0, 1).reshape(H, B * N),
                                                k_assign.permute(2, 0, 1).reshape(H, B * N)], dim=1))
        else:
            self.last_commitment_loss = None
        return routed_output(self.out_proj, out, key, query, batched, return_graph, EdgeLabel.CLUSTER)

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, num_clusters={self.num_clusters}, "
                f"cluster_size={self.cluster_size}, ema_decay={self.ema_decay}, commitment={self.commitment}, "
                f"causal={self.causal}, dropout={self.dropout}")
