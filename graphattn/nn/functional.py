"""Functional graph attention: exact softmax attention over the edges of an attention graph."""

from __future__ import annotations

import math

import torch
from torch.utils.weak import WeakIdKeyDictionary

from graphattn._validate import check_float, check_int, renamed_parameters
from graphattn.graph import AttentionGraph
from graphattn.nn._engine import attention_weights
from graphattn.nn import backends as _backends
from graphattn.nn.plan import _build_plan, get_plan

__all__ = ["graph_attention"]


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"expected {name} to be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"expected {name} of shape [N, H, D], got {list(t.shape)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"expected k and v with the same [Nk, H], got {list(k.shape)} and {list(v.shape)}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"expected q and k with the same number of heads, got {q.shape[1]} and {k.shape[1]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q and k with the same head dim, got {q.shape[2]} and {k.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"expected q, k, v on one device, got {q.device}, {k.device}, {v.device}")


class _EdgeIndexEntry:
    """What graph_attention derived from one edge_index tensor: its int64 copy (None when it is
    int64 already) and its plans per options, valid while the tensor keeps its version."""

    __slots__ = ("key", "ei", "sorted", "plans")

    def __init__(self, key, ei, sorted_edges: bool):
        self.key, self.ei, self.sorted, self.plans = key, ei, sorted_edges, {}


# edge_index tensor -> _EdgeIndexEntry, held weakly: a PyG-style loop that passes the same
# edge_index every step validates it and builds its plan once (an AttentionGraph caches its plan
# on itself). Keyed by identity; an in-place change bumps the tensor's version and invalidates.
_EDGE_INDEX_CACHE = WeakIdKeyDictionary()


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter: not cached
        return None


def _check_edge_index(graph: torch.Tensor, nq: int, nk: int, device) -> tuple[torch.Tensor, bool]:
    """The int64 edge_index, and whether its edges are sorted by (query, key)."""
    if graph.dtype not in (torch.int64, torch.int32) or graph.dim() != 2 or graph.shape[0] != 2:
        raise ValueError(f"expected edge_index as an int64 tensor of shape [2, E], got {graph.dtype} {list(graph.shape)}")
    if graph.device != device:
        raise ValueError(f"expected edge_index on {device} like q, got {graph.device}")
    ei = graph.long()
    if ei.numel():
        if int(ei[0].min()) < 0 or int(ei[0].max()) >= nk:
            raise ValueError(f"expected edge_index[0] (keys) in [0, {nk}), got values in "
                             f"[{int(ei[0].min())}, {int(ei[0].max())}]")
        if int(ei[1].min()) < 0 or int(ei[1].max()) >= nq:
            raise ValueError(f"expected edge_index[1] (queries) in [0, {nq}), got values in "
                             f"[{int(ei[1].min())}, {int(ei[1].max())}]")
        code = ei[1] * nk + ei[0]
        if code.numel() > 1 and not bool((code[1:] > code[:-1]).all()):
            if torch.unique(code).numel() != code.numel():
                raise ValueError("expected unique edges in edge_index, got duplicates "
                                 "(coalesce with AttentionGraph.from_edge_index)")
            return ei, False
    return ei, True


def _check_graph(graph, nq: int, nk: int, device):
    """Return (edge_index, head_mask, the AttentionGraph or the edge_index's cache entry)."""
    if isinstance(graph, AttentionGraph):
        if graph.num_nodes != nq or graph.num_nodes != nk:
            raise ValueError(
                f"expected q and k with num_nodes = {graph.num_nodes} rows (an AttentionGraph is "
                f"self-attention over its nodes), got {nq} queries and {nk} keys")
        if graph.device != device:
            raise ValueError(f"expected graph on {device} like q, got {graph.device} (use graph.to(device))")
        return graph.edge_index, graph.head_mask, graph
    if not isinstance(graph, torch.Tensor):
        raise TypeError(f"expected graph to be an AttentionGraph or an edge_index tensor, got {type(graph).__name__}")
    key = (_version(graph), nq, nk, device)
    entry = _EDGE_INDEX_CACHE.get(graph) if key[0] is not None else None
    if entry is None or entry.key != key:
        ei, sorted_edges = _check_edge_index(graph, nq, nk, device)
        # The entry must not hold the tensor it is keyed by (it would never be collected).
        entry = _EdgeIndexEntry(key, None if ei is graph else ei, sorted_edges)
        if key[0] is not None:
            _EDGE_INDEX_CACHE[graph] = entry
    ei = graph if entry.ei is None else entry.ei
    return ei, None, entry


def _trust_edge_index(edge_index: torch.Tensor, nq: int, nk: int) -> None:
    """Record an int64 edge_index built by graphattn itself (unique, in range, sorted by
    (query, key)) as checked, so graph_attention skips its O(E) checks (internal callers that
    build a graph per step: LSH, routing)."""
    key = (_version(edge_index), nq, nk, edge_index.device)
    if key[0] is not None and edge_index.dtype == torch.int64:
        _EDGE_INDEX_CACHE[edge_index] = _EdgeIndexEntry(key, None, True)


def _plan(src, ei, nq: int, nk: int, tile, dense_threshold):
    if isinstance(src, AttentionGraph):
        return get_plan(src, nq, nk, tile=tile, dense_threshold=dense_threshold)
    plan = src.plans.get((tile, dense_threshold))
    if plan is None:
        plan = src.plans[(tile, dense_threshold)] = _build_plan(ei, nq, nk, None, tile, dense_threshold,
                                                                sorted_edges=src.sorted)
    return plan


@renamed_parameters(return_weights="return_attention_weights")
def graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    graph,
    *,
    num_queries: int | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_attention_weights: bool = False,
    tile: int = 64,
    dense_threshold: float = 0.25,
):
    r"""Exact multi-head softmax attention over the edges of ``graph``.

    .. math::
        \mathrm{out}_{i,h} = \sum_{j:(j,i)\in E} \alpha_{ij,h} v_{j,h}, \qquad
        \alpha_{ij,h} = \operatorname{softmax}_{j:(j,i)\in E}\left(s\, q_{i,h}\cdot k_{j,h}
        + b_{(j,i),h}\right)

    The softmax runs per query and head over exactly its edges (and, for a per-head layout,
    exactly the edges of that head). A query with no keys outputs zeros, never NaN.

    Args:
        q: ``[Nq, H, D]`` queries. k: ``[Nk, H, D]`` keys. v: ``[Nk, H, Dv]`` values.
        graph: an :class:`~graphattn.AttentionGraph` (self-attention over its nodes; its tiling
            plan is cached on it) or an ``edge_index`` ``[2, E]`` (row 0 key ``< Nk``, row 1
            query ``< Nq``; ``Nq != Nk`` is cross-attention), edges unique. An edge_index's
            checks and plan are cached for as long as the tensor lives and is not modified in
            place (by identity and version counter), so passing the same tensor every step
            costs them once.
        num_queries: optional check that ``q`` has this many rows.
        bias: ``[E, H]`` added to the scores of the edges, in the graph's edge order
            (``graph.edge_index`` order for an AttentionGraph).
        scale: score scale, default ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities (``out`` scaled by ``1 / (1 - p)``),
            drawn from torch's default generator once per call and replayed in the backward.
        return_attention_weights: also return the probabilities ``[E, H]`` (before dropout; detached).
        tile, dense_threshold: tiling-plan options (see :mod:`graphattn.nn.plan`).

    Returns:
        ``[Nq, H, Dv]`` in the dtype of ``q`` (and the weights when asked). Half-precision inputs
        are computed in float32.
    """
    _check_qkv(q, k, v)
    nq, H, D = q.shape
    nk = k.shape[0]
    if num_queries is not None and check_int("num_queries", num_queries, minimum=0) != nq:
        raise ValueError(f"expected q with num_queries = {num_queries} rows, got {nq}")
    edge_index, head_mask, plan_src = _check_graph(graph, nq, nk, q.device)
    E = edge_index.shape[1]
    if head_mask is not None and head_mask.shape[1] != H:
        raise ValueError(f"expected {head_mask.shape[1]} heads for the graph's per-head layout, got {H}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.dtype.is_floating_point:
            raise TypeError("expected bias to be a floating-point tensor of shape [E, H]")
        if bias.shape != (E, H):
            raise ValueError(f"expected bias of shape [{E}, {H}], got {list(bias.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else check_float("scale", scale)
    dropout_p = check_float("dropout_p", dropout_p, minimum=0.0, maximum=1.0)
    if dropout_p == 1.0:
        raise ValueError("expected dropout_p < 1, got 1.0")
    plan = _plan(plan_src, edge_index, nq, nk, tile, dense_threshold)
    drop_key = int(torch.randint(0, 2**62, (1,))) if dropout_p > 0 else 0
    backend = _backends.select(q, k, v, plan=plan, bias=bias, dropout_p=dropout_p)
    out, lse = _backends.run(backend, q, k, v, bias, plan, scale, dropout_p, drop_key)
    if not return_attention_weights:
        return out
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    w = attention_weights(q.detach().to(acc), k.detach().to(acc), None if bias is None else bias.detach().to(acc),
                          scale, lse.detach().to(acc), edge_index, head_mask)
    return out, w.to(q.dtype)
