r"""How much of dense softmax attention a sparse pattern keeps, for given queries and keys.

For scores :math:`s_{ij} = c\, q_i \cdot k_j` the dense attention of query ``i`` is
:math:`P_{ij} = \operatorname{softmax}_j(s_{ij})` over all ``n`` keys. A pattern ``E`` keeps
the *recall* :math:`R_i = \sum_{j:(j,i)\in E} P_{ij}`: the probability mass of full attention
that lands on its edges (the quantity content-based patterns such as Reformer's LSH and the
Routing Transformer try to maximise: Kitaev et al., 2020; Roy et al., 2021, who cast attention
as maximum inner product search). The best any pattern with ``b_i`` keys for query ``i`` can
do is the *top-k oracle*, the mass of the ``b_i`` largest :math:`P_{ij}`, so
``attention_recall(g) <= topk_recall(q, k, g)`` entry by entry.

Sparse attention renormalises over the kept keys, so its output is
:math:`\sum_{j \in E_i} (P_{ij}/R_i) v_j`; :func:`output_error` measures how far that is from
the dense output :math:`\sum_j P_{ij} v_j`.

Every function runs over query rows in chunks: ``O(n^2 H D)`` time and ``O(chunk * n * H)``
memory, never an ``n x n`` matrix. Sums run in float64 for float64 inputs and float32
otherwise.
"""

from __future__ import annotations

import math

import torch

from graphattn._validate import check_float, check_int
from graphattn.analysis._common import check_graph
from graphattn.graph import AttentionGraph, NodeType

__all__ = ["attention_recall", "topk_recall", "output_error"]

_CELLS = 1 << 22  # probability cells per chunk of query rows


def _as_heads(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"expected {name} to be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() == 2:
        return t[:, None, :]
    if t.dim() != 3:
        raise ValueError(f"expected {name} of shape [n, H, D] or [n, D], got {list(t.shape)}")
    return t


def _check_qk(q, k):
    q3, k3 = _as_heads("q", q), _as_heads("k", k)
    if q.dim() != k.dim() or q3.shape != k3.shape:
        raise ValueError(f"expected q and k of the same shape, got {list(q.shape)} and {list(k.shape)}")
    if q3.dtype != k3.dtype:
        raise TypeError(f"expected q and k of one dtype, got {q3.dtype} and {k3.dtype}")
    if q3.device != k3.device:
        raise ValueError(f"expected q and k on one device, got {q3.device} and {k3.device}")
    return q3, k3


def _scale(scale, dim: int) -> float:
    return 1.0 / math.sqrt(dim) if scale is None else check_float("scale", scale)


def _rows(chunk, n: int, heads: int) -> int:
    if chunk is None:
        return max(1, _CELLS // max(1, heads * n))
    return check_int("chunk", chunk, minimum=1)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _token_edges(g: AttentionGraph, n: int, heads: int, device):
    """The edges among the ``n`` attending rows, ``(key, query, head_mask, ptr)``.

    ``n == g.num_nodes``: every node is a row. ``n == g.num_tokens`` with the tokens in front:
    the token-to-token edges (edges touching extra nodes are dropped: they carry no dense
    counterpart).
    """
    if n == g.num_nodes:
        keep = None
    elif n == g.num_tokens and bool((g.node_type[:n] == NodeType.TOKEN).all()):
        keep = (g.edge_index[0] < n) & (g.edge_index[1] < n)
    else:
        raise ValueError(
            f"expected q with g.num_nodes = {g.num_nodes} rows, or g.num_tokens = {g.num_tokens} rows "
            f"with the tokens numbered first, got {n}")
    ei = g.edge_index if keep is None else g.edge_index[:, keep]
    hm = g.head_mask if keep is None or g.head_mask is None else g.head_mask[keep]
    if hm is not None and hm.shape[1] != heads:
        raise ValueError(f"expected {hm.shape[1]} heads for the graph's per-head layout, got {heads}")
    ei, hm = ei.to(device), None if hm is None else hm.to(device)
    ptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(torch.bincount(ei[1], minlength=n), 0, out=ptr[1:])
    return ei[0], ei[1], hm, ptr


def _probabilities(q3, k3, scale, rows):
    """Yield ``(a, b, P[a:b])`` with ``P`` ``[rows, H, n]`` the dense softmax probabilities."""
    acc = _acc(q3)
    ka = k3.to(acc)
    n = q3.shape[0]
    for a in range(0, n, rows):
        b = min(n, a + rows)
        s = torch.einsum("ihd,jhd->ihj", q3[a:b].to(acc), ka) * scale
        yield a, b, torch.softmax(s, dim=-1)


@torch.no_grad()
def attention_recall(g: AttentionGraph, q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None,
                     chunk: int | None = None) -> torch.Tensor:
    r"""Per query and head, the dense softmax mass that the edges of ``g`` keep:
    :math:`R_{ih} = \sum_{j:(j,i)\in E} \operatorname{softmax}_j(c\, q_{ih}\cdot k_{jh})`
    (module docstring), in ``[0, 1]``; a query without keys keeps 0.

    Args:
        g: the pattern. ``q`` has ``g.num_nodes`` rows (every node attends), or
            ``g.num_tokens`` rows when the tokens are numbered first: then only token-to-token
            edges count and the dense softmax runs over the tokens. A per-head layout
            (``g.head_mask``) gives each head its own edges.
        q, k: ``[n, H, D]`` (or ``[n, D]``, one head).
        scale: score scale ``c``, default ``1 / sqrt(D)``.
        chunk: query rows per chunk (default: about 4M probabilities at once).

    Returns:
        ``[n, H]`` (``H = 1`` for 2-D inputs), float64 for float64 inputs, else float32.

    >>> import torch
    >>> from graphattn import rules
    >>> q = k = torch.zeros(4, 2, 8)  # uniform attention: each of 4 keys has mass 1/4
    >>> attention_recall(rules.band(4, radius=1), q, k)[:, 0].tolist()
    [0.5, 0.75, 0.75, 0.5]
    """
    g = check_graph("g", g)
    q3, k3 = _check_qk(q, k)
    n, H, D = q3.shape
    key, query, hm, ptr = _token_edges(g, n, H, q3.device)
    scale = _scale(scale, D)
    out = torch.zeros(n, H, dtype=_acc(q3), device=q3.device)
    for a, b, p in _probabilities(q3, k3, scale, _rows(chunk, n, H)):
        e0, e1 = int(ptr[a]), int(ptr[b])
        qi, kj = query[e0:e1] - a, key[e0:e1]
        vals = p[qi, :, kj]  # [e, H]
        if hm is not None:
            vals = vals * hm[e0:e1]
        out[a:b].index_add_(0, qi, vals)
    return out


def _budget(budget, n: int, H: int, device) -> torch.Tensor:
    if isinstance(budget, AttentionGraph):
        _, query, hm, ptr = _token_edges(budget, n, H, device)
        if hm is None:
            return ptr.diff()[:, None].expand(n, H)
        return torch.zeros(n, H, dtype=torch.int64, device=device).index_add_(0, query, hm.long())
    if isinstance(budget, torch.Tensor):
        if budget.dtype.is_floating_point or budget.dtype == torch.bool:
            raise TypeError(f"expected budget to hold integers, got dtype {budget.dtype}")
        b = budget.to(device, torch.int64)
        if b.dim() == 1:
            b = b[:, None]
        if b.dim() != 2 or b.shape[0] != n or b.shape[1] not in (1, H):
            raise ValueError(f"expected budget of shape [{n}] or [{n}, {H}], got {list(budget.shape)}")
        b = b.expand(n, H)
    else:
        b = torch.full((n, H), check_int("budget", budget), dtype=torch.int64, device=device)
    if b.numel() and (int(b.min()) < 0 or int(b.max()) > n):
        bad = int(b.min()) if int(b.min()) < 0 else int(b.max())
        raise ValueError(f"expected budget in [0, {n}] keys per query, got {bad}")
    return b


@torch.no_grad()
def topk_recall(q: torch.Tensor, k: torch.Tensor, budget, *, scale: float | None = None,
                chunk: int | None = None) -> torch.Tensor:
    r"""The top-k oracle: per query and head, the dense softmax mass of its ``b`` most probable
    keys, the most any pattern with ``b`` keys for that query can keep (module docstring).

    Args:
        q, k: ``[n, H, D]`` (or ``[n, D]``).
        budget: keys per query: an int, an int tensor ``[n]`` or ``[n, H]``, or an
            :class:`~graphattn.AttentionGraph`, whose own keys per query (and head) are used:
            the same edge budget, query by query, so ``attention_recall(g, q, k) <=
            topk_recall(q, k, g)``.
        scale, chunk: as for :func:`attention_recall`.

    Returns:
        ``[n, H]``, as :func:`attention_recall`.

    >>> import torch
    >>> q = k = torch.zeros(4, 8)
    >>> topk_recall(q, k, 3)[:, 0].tolist()
    [0.75, 0.75, 0.75, 0.75]
    """
    q3, k3 = _check_qk(q, k)
    n, H, D = q3.shape
    b = _budget(budget, n, H, q3.device)
    scale = _scale(scale, D)
    out = torch.zeros(n, H, dtype=_acc(q3), device=q3.device)
    for a, e, p in _probabilities(q3, k3, scale, _rows(chunk, n, H)):
        kmax = int(b[a:e].max()) if e > a else 0
        if kmax == 0:
            continue
        mass = p.topk(kmax, dim=-1, sorted=True).values.cumsum(dim=-1)  # [rows, H, kmax]
        idx = (b[a:e] - 1).clamp_min(0)
        top = mass.gather(-1, idx[..., None])[..., 0]
        out[a:e] = torch.where(b[a:e] > 0, top, torch.zeros_like(top))
    return out


@torch.no_grad()
def output_error(g: AttentionGraph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 scale: float | None = None, chunk: int | None = None) -> float:
    r"""Relative Frobenius error of sparse attention over ``g`` against dense attention:
    :math:`\lVert O_{sparse} - O_{dense} \rVert_F / \lVert O_{dense} \rVert_F` over all
    queries, heads and value dimensions.

    The sparse output comes from :func:`graphattn.nn.graph_attention` (softmax renormalised over
    each query's edges; a query without keys outputs zeros), the dense one from a chunked
    softmax over all ``n`` keys. Rows and head layouts as for :func:`attention_recall`; ``v``
    is ``[n, H, Dv]`` (``[n, Dv]`` with 2-D ``q``, ``k``). Returns 0.0 when both outputs vanish.

    >>> import torch
    >>> from graphattn import rules
    >>> q = k = torch.zeros(6, 4); v = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    >>> output_error(rules.full(6), q, k, v) < 1e-6
    True
    """
    from graphattn.nn.functional import graph_attention

    g = check_graph("g", g)
    q3, k3 = _check_qk(q, k)
    v3 = _as_heads("v", v)
    n, H, D = q3.shape
    if v.dim() != q.dim() or v3.shape[:2] != (n, H):
        raise ValueError(f"expected v of shape [{n}, {H}, Dv]" + (" or [n, Dv]" if q.dim() == 2 else "")
                         + f" matching q, got {list(v.shape)}")
    if v3.dtype != q3.dtype or v3.device != q3.device:
        raise ValueError(f"expected v with q's dtype and device ({q3.dtype}, {q3.device}), got {v3.dtype}, {v3.device}")
    key, query, hm, _ = _token_edges(g, n, H, q3.device)
    if n == g.num_nodes:
        graph = g if g.device == q3.device else g.to(q3.device)
    else:
        graph = AttentionGraph.from_edge_index(torch.stack([key, query]), n, head_mask=hm)
    scale = _scale(scale, D)
    sparse = graph_attention(q3, k3, v3, graph, scale=scale)
    acc = _acc(q3)
    va = v3.to(acc)
    num = torch.zeros((), dtype=acc, device=q3.device)
    den = torch.zeros((), dtype=acc, device=q3.device)
    for a, b, p in _probabilities(q3, k3, scale, _rows(chunk, n, H)):
        dense = torch.einsum("ihj,jhd->ihd", p, va)
        num += (sparse[a:b].to(acc) - dense).square().sum()
        den += dense.square().sum()
    num, den = float(num), float(den)
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)
