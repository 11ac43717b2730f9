"""Routing Transformer attention: queries attend the keys routed to the same k-means cluster.

The graph depends on the vectors. Clustering runs on ``x``'s device; the returned graph lives on
the CPU (move it with ``g.to(device)``).
"""

from __future__ import annotations

import torch

from graphattn._random import seed_key
from graphattn._validate import check_int, renamed_parameters
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import COALESCE_BYTES, check_edges, coalesce
from graphattn.rules.hashing import _check_vectors, _compute_dtype

__all__ = ["kmeans", "spherical_kmeans"]

_EPS = 1e-12


def _unit(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(v, dim=-1, eps=_EPS)


def _kmeans(points: torch.Tensor, num_clusters: int, iters: int, gen: torch.Generator):
    """Spherical k-means on unit rows ``points`` [m, d]; returns (centroids [K, d], assign [m])."""
    m = points.shape[0]
    # k-means++ seeding: first centroid uniform, then proportional to 1 - max cosine similarity.
    first = int(torch.randint(0, m, (1,), generator=gen))
    chosen = [first]
    best = points @ points[first]  # max cosine similarity to the chosen centroids so far, [m]
    for _ in range(1, num_clusters):
        weight = (1.0 - best).clamp_min(0.0).to("cpu", torch.float64)
        if float(weight.sum()) <= 0.0:  # every point sits on a centroid already: pick uniformly
            weight = torch.ones(m, dtype=torch.float64)
        nxt = int(torch.multinomial(weight, 1, generator=gen))
        chosen.append(nxt)
        best = torch.maximum(best, points @ points[nxt])
    centroids = points[torch.tensor(chosen, device=points.device)].clone()
    assign = (points @ centroids.T).argmax(dim=1)
    for _ in range(iters):  # Lloyd iterations
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        norms = sums.norm(dim=1, keepdim=True)
        keep = norms > _EPS  # empty (or cancelling) clusters keep their previous centroid
        centroids = torch.where(keep, sums / norms.clamp_min(_EPS), centroids)
        assign = (points @ centroids.T).argmax(dim=1)
    return centroids, assign


def _check_clusters(num_clusters, iters, n: int) -> tuple[int, int]:
    num_clusters = check_int("num_clusters", num_clusters, minimum=1)
    if num_clusters > n:
        raise ValueError(f"expected num_clusters <= n = {n} (number of vectors), got {num_clusters}")
    return num_clusters, check_int("iters", iters, minimum=0)


def spherical_kmeans(points: torch.Tensor, *, num_clusters: int, iters: int = 10, seed=None):
    """Spherical k-means of the rows of ``points`` [m, d] (rows are unit-normalised first).

    k-means++ seeding (the first centroid uniform, each next one sampled with probability
    proportional to ``1 - max cosine similarity`` to the centroids chosen so far, i.e. to the
    squared distance on the sphere), then ``iters`` Lloyd iterations: assign each point to the
    centroid of largest cosine similarity (ties: lowest id), move each centroid to the
    normalised mean of its points; an empty cluster keeps its previous centroid. Randomness only
    from ``seed`` (a CPU ``torch.Generator`` seeded with :func:`graphattn._random.seed_key`).

    Returns ``(centroids, assignment)``: unit float ``[num_clusters, d]`` and int64 ``[m]``, on
    ``points``' device (float64 for float64 input, float32 otherwise).

    >>> pts = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> c, a = spherical_kmeans(pts, num_clusters=2, seed=0)
    >>> bool(a[0] == a[1]) and bool(a[2] == a[3]) and bool(a[0] != a[2])
    True
    """
    points = _check_vectors("points", points, min_rows=1)
    num_clusters, iters = _check_clusters(num_clusters, iters, points.shape[0])
    gen = torch.Generator().manual_seed(seed_key(seed))
    return _kmeans(_unit(points.to(_compute_dtype(points))), num_clusters, iters, gen)


def _nearest(sim: torch.Tensor, cluster_size: int) -> torch.Tensor:
    """Per cluster (column), the ``cluster_size`` rows of largest similarity; ties to the lower row."""
    return torch.sort(sim, dim=0, descending=True, stable=True).indices[:cluster_size]  # [cluster_size, K]


@renamed_parameters(window="cluster_size")
def kmeans(x: torch.Tensor, *, num_clusters: int, keys: torch.Tensor | None = None,
           cluster_size: int | None = None, iters: int = 10, seed=None) -> AttentionGraph:
    """Routing attention (Roy, Saffar, Vaswani and Grangier, "Efficient Content-Based Sparse
    Attention with Routing Transformers", TACL 2021) over ``n`` tokens.

    Queries ``x`` [n, d] and keys (``keys`` [n, d], default ``x`` itself: shared-QK) are
    unit-normalised; :func:`spherical_kmeans` with ``num_clusters`` clusters runs on the union of
    normalised queries and keys (just the queries when ``keys`` is None). Balanced routing: each
    cluster ``c`` keeps the ``cluster_size`` queries ``Q_c`` and the ``cluster_size`` keys ``K_c`` of largest
    cosine similarity to its centroid (ties: lower index), whatever their k-means assignment.

    Edge set: query ``i`` attends key ``j`` when ``i in Q_c`` and ``j in K_c`` for some cluster
    ``c`` (union over clusters). A query in no ``Q_c`` attends itself only (its self-loop), so
    every query has at least one key. With ``keys=None``, ``Q_c == K_c``, so every routed query
    also attends itself. Every edge is labelled :attr:`EdgeLabel.CLUSTER`.

    Keys per query: ``cluster_size`` per cluster whose query set holds ``i`` (at most
    ``m_i * cluster_size`` for ``m_i`` such clusters, fewer where key sets overlap); 1 for a query in no
    cluster. ``cluster_size`` defaults to ``ceil(n / num_clusters)`` (about ``n / num_clusters`` keys
    per query, ``num_clusters * cluster_size**2`` edges at most) and must lie in ``[1, n]``.

    Clustering runs on ``x``'s device in float64 for float64 input, float32 otherwise; the graph
    is returned on the CPU. The Routing Transformer moves centroids by an exponential moving
    average during training; this rule is the stateless form (k-means from scratch per call).
    Builds no ``n x n`` matrix: similarities are ``[2n, num_clusters]``.

    >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> print(kmeans(x, num_clusters=2, seed=0).to_string())
    ##..
    ##..
    ..##
    ..##
    """
    x = _check_vectors("x", x, min_rows=1)
    n = x.shape[0]
    if keys is not None:
        keys = _check_vectors("keys", keys)
        if keys.shape != x.shape:
            raise ValueError(f"expected keys of the same shape as x {list(x.shape)}, got {list(keys.shape)}")
    num_clusters, iters = _check_clusters(num_clusters, iters, n)
    if cluster_size is None:
        cluster_size = -(-n // num_clusters)
    else:
        cluster_size = check_int("cluster_size", cluster_size, minimum=1, maximum=n)
    check_edges(f"rules.kmeans(n={n}, num_clusters={num_clusters}, cluster_size={cluster_size})",
                num_clusters * cluster_size**2 + n, COALESCE_BYTES)
    dtype = _compute_dtype(x)
    q = _unit(x.to(dtype))
    k = q if keys is None else _unit(keys.to(x.device, dtype))
    points = q if keys is None else torch.cat([q, k])
    gen = torch.Generator().manual_seed(seed_key(seed))
    centroids, _ = _kmeans(points, num_clusters, iters, gen)
    q_sets = _nearest(q @ centroids.T, cluster_size).cpu()  # [cluster_size, K]
    k_sets = q_sets if keys is None else _nearest(k @ centroids.T, cluster_size).cpu()
    # every (query in Q_c, key in K_c) pair: [K, cluster_size (queries), cluster_size (keys)]
    query = q_sets.T[:, :, None].expand(num_clusters, cluster_size, cluster_size).reshape(-1)
    key = k_sets.T[:, None, :].expand(num_clusters, cluster_size, cluster_size).reshape(-1)
    routed = torch.zeros(n, dtype=torch.bool)
    routed[q_sets.reshape(-1)] = True
    lonely = torch.nonzero(~routed).flatten()
    return coalesce(torch.cat([key, lonely]), torch.cat([query, lonely]), n, label=EdgeLabel.CLUSTER)
