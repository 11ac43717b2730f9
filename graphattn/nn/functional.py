"""Functional graph attention: exact softmax attention over the edges of an attention graph, and
the log-sum-exp merge that composes partial attentions."""

from __future__ import annotations

import math
import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

from graphattn._memory import check_memory
from graphattn._validate import check_edge_index, check_float, check_int, renamed_parameters
from graphattn.graph import AttentionGraph
from graphattn.nn import backends as _backends
from graphattn.nn._engine import attention_weights, score_bound
from graphattn.nn._nonfinite import Poison
from graphattn.nn.plan import _build_plan, get_plan

__all__ = ["graph_attention", "merge_attention"]


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
    if q.shape[1] == 0:
        raise ValueError(f"expected q, k, v with at least one head, got shape {list(q.shape)}")
    if q.shape[2] == 0 or v.shape[2] == 0:
        raise ValueError(f"expected head dims >= 1, got q {list(q.shape)} and v {list(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"expected q, k, v on one device, got {q.device}, {k.device}, {v.device}")


class _Multigraph:
    """An edge list with repeated edges, coalesced: ``edge_index`` ``[2, U]`` unique and sorted
    by (query, key), ``inverse`` ``[E]`` the unique edge of each input edge, ``counts`` ``[U]``."""

    __slots__ = ("edge_index", "inverse", "counts")

    def __init__(self, code: torch.Tensor, nk: int):
        uniq, self.inverse, self.counts = torch.unique(code, return_inverse=True, return_counts=True)
        self.edge_index = torch.stack([uniq % max(nk, 1), uniq // max(nk, 1)])


class _EdgeIndexEntry:
    """What graph_attention derived from one edge_index tensor: its int64 copy (None when it is
    int64 already), whether its edges are sorted, its coalesced form when edges repeat, and its
    plans per options, valid while the tensor keeps its version."""

    __slots__ = ("key", "ei", "sorted", "multi", "plans")

    def __init__(self, key, ei, sorted_edges: bool, multi: _Multigraph | None = None):
        self.key, self.ei, self.sorted, self.multi, self.plans = key, ei, sorted_edges, multi, {}


# edge_index tensor -> _EdgeIndexEntry, held weakly: a PyG-style loop that passes the same
# edge_index every step validates it and builds its plan once (an AttentionGraph caches its plan
# on itself). Keyed by identity; an in-place change bumps the tensor's version and invalidates.
_EDGE_INDEX_CACHE = WeakIdKeyDictionary()


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter: not cached
        return None


def _check_edge_index(graph: torch.Tensor, nq: int, nk: int, device) -> _EdgeIndexEntry:
    """Check an edge_index against ``nq`` queries and ``nk`` keys; sortedness and repeats."""
    ei, _ = check_edge_index(graph, num_keys=nk, num_queries=nq, device=device)
    sorted_edges, multi = True, None
    if ei.numel():
        code = ei[1] * nk + ei[0]
        if code.numel() > 1 and not bool((code[1:] > code[:-1]).all()):
            sorted_edges = False
            multi = _Multigraph(code, nk)
            if multi.counts.numel() == code.numel():
                multi = None  # unsorted, but every edge once
    # The entry must not hold the tensor it is keyed by (it would never be collected).
    return _EdgeIndexEntry(None, None if ei is graph else ei, sorted_edges, multi)


def _entry(graph: torch.Tensor, nq: int, nk: int, device) -> _EdgeIndexEntry:
    key = (_version(graph), nq, nk, device)
    entry = _EDGE_INDEX_CACHE.get(graph) if key[0] is not None else None
    if entry is None or entry.key != key:
        entry = _check_edge_index(graph, nq, nk, device)
        entry.key = key
        if key[0] is not None:
            _EDGE_INDEX_CACHE[graph] = entry
    return entry


def _trust_edge_index(edge_index: torch.Tensor, nq: int, nk: int) -> None:
    """Record an int64 edge_index built by graphattn itself (unique, in range, sorted by
    (query, key)) as checked, so graph_attention skips its O(E) checks (internal callers that
    build a graph per step: LSH, routing)."""
    key = (_version(edge_index), nq, nk, edge_index.device)
    if key[0] is not None and edge_index.dtype == torch.int64:
        _EDGE_INDEX_CACHE[edge_index] = _EdgeIndexEntry(key, None, True)


def _check_head_mask(head_mask, num_edges: int, heads: int, device) -> torch.Tensor:
    if not isinstance(head_mask, torch.Tensor) or head_mask.dtype != torch.bool:
        raise TypeError(f"expected head_mask to be a bool tensor of shape [E, H], got "
                        f"{head_mask.dtype if isinstance(head_mask, torch.Tensor) else type(head_mask).__name__}")
    if head_mask.shape != (num_edges, heads):
        raise ValueError(f"expected head_mask of shape [{num_edges}, {heads}], got {list(head_mask.shape)}")
    if head_mask.device != device:
        raise ValueError(f"expected head_mask on {device} like q, got {head_mask.device}")
    return head_mask


def _edge_index_plan(entry: _EdgeIndexEntry, ei, head_mask, nq: int, nk: int, tile, dense_threshold):
    """The plan of an edge_index (coalesced when its edges repeat), cached on its entry; a per-
    head plan is cached for the head_mask tensor it was built from (by identity and version)."""
    key = (tile, dense_threshold)
    if head_mask is not None:
        key += ("heads",)
    hit = entry.plans.get(key)
    if head_mask is not None and hit is not None:
        ref, version, plan = hit
        hit = plan if ref() is head_mask and version == _version(head_mask) else None
    if hit is not None:
        return hit
    if entry.multi is not None:
        cei, sorted_edges = entry.multi.edge_index, True
        if head_mask is not None:
            head_mask = _any_copy(head_mask, entry.multi)
    else:
        cei, sorted_edges = ei, entry.sorted
    plan = _build_plan(cei, nq, nk, head_mask, tile, dense_threshold, sorted_edges=sorted_edges)
    entry.plans[key] = plan if len(key) == 2 else (weakref.ref(head_mask), _version(head_mask), plan)
    return plan


def _any_copy(head_mask: torch.Tensor, multi: _Multigraph) -> torch.Tensor:
    out = torch.zeros(multi.counts.numel(), head_mask.shape[1], dtype=torch.int32, device=head_mask.device)
    return out.index_add_(0, multi.inverse, head_mask.to(torch.int32)) > 0


def _coalesced_bias(bias, head_mask, multi: _Multigraph, heads: int, dtype):
    """The bias of each coalesced edge: the log-sum-exp of its copies' biases (``log c`` for
    ``c`` copies without a bias), so the coalesced graph gives each copy its own message, as
    PyG's softmax over an edge list with repeats does. Differentiable in ``bias``."""
    if bias is None and head_mask is None:
        return torch.log(multi.counts.to(dtype))[:, None].expand(-1, heads)
    U = multi.counts.numel()
    b = torch.zeros(multi.inverse.numel(), heads, dtype=dtype, device=multi.inverse.device) if bias is None \
        else bias.to(dtype)
    if head_mask is not None:
        b = b.masked_fill(~head_mask, float("-inf"))
    idx = multi.inverse[:, None].expand_as(b)
    top = torch.full((U, heads), float("-inf"), dtype=dtype, device=b.device)
    top = top.scatter_reduce(0, idx, b.detach(), "amax")
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    total = torch.zeros(U, heads, dtype=dtype, device=b.device).index_add(0, multi.inverse, torch.exp(b - top[multi.inverse]))
    return top + torch.log(total)


def _check_bias(bias, E: int, H: int):
    if not isinstance(bias, torch.Tensor) or not bias.dtype.is_floating_point:
        raise TypeError("expected bias to be a floating-point tensor of shape [E, H]")
    if bias.shape != (E, H):
        raise ValueError(f"expected bias of shape [{E}, {H}], got {list(bias.shape)}")
    if bias.numel() and bool((bias == float("inf")).any()):
        raise ValueError("expected bias without +inf (a +inf score has no softmax; -inf removes an edge), got +inf")


def _check_memory(q, k, v, plan, E: int, nq: int, nk: int):
    """The call's allocations before any is made (the plan, built or cached, checks its own):
    the output and its log-sum-exp state, gradients' head-major copies, and the engine's working
    set (bounded chunks of dense tiles, the CSR part's per-head values)."""
    H, Dv = q.shape[1], v.shape[2]
    acc = 8 if q.dtype == torch.float64 else 4
    est = nq * H * (Dv + 3) * acc  # out, m, l, lse
    if plan.sparse is not None:  # one head at a time: its copies of q, k, v and its per-edge values
        est += (nq + 2 * nk) * max(q.shape[2], Dv) * acc + plan.sparse_edges * acc * 4
    est += (1 << 20) * acc * 4  # a dense chunk's score cells (engine._CELLS, heads included) in 4 buffers
    check_memory(f"graph_attention over {E:,} edges ({nq:,} queries, {nk:,} keys, {H} heads)", est, q.device)


@renamed_parameters(return_weights="return_attention_weights")
def graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    graph,
    *,
    num_queries: int | None = None,
    bias: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    return_attention_weights: bool = False,
    tile: int = 64,
    dense_threshold: float = 0.25,
):
    r"""Exact multi-head softmax attention over the edges of ``graph``.

    .. math::
        \mathrm{out}_{i,h} = \sum_{j:(j,i)\in E} \alpha_{ij,h} v_{j,h}, \qquad
        \alpha_{ij,h} = \operatorname{softmax}_{j:(j,i)\in E}\left(s\, q_{i,h}\cdot k_{j,h}
        + b_{(j,i),h}\right), \qquad
        \mathrm{lse}_{i,h} = \log \sum_{j:(j,i)\in E} e^{s\, q_{i,h}\cdot k_{j,h} + b_{(j,i),h}}

    The softmax runs per query and head over exactly its edges (and, for a per-head layout,
    exactly the edges of that head). A query with no keys outputs zeros and ``lse = -inf``,
    never NaN. The default scale is ``s = 1 / sqrt(D)``.

    **Repeated edges** (an edge_index that lists ``(j, i)`` ``c`` times, as a PyG multigraph or
    ``torch.randint`` edges may) are ``c`` messages, as in PyG's attention convolutions
    (``TransformerConv``): the same as the coalesced graph with a score bias of ``log c`` (each
    copy keeps its own ``bias``). Unsorted edges are fine. An AttentionGraph's edges are unique.

    **Exact at any scale**: scores whose bound ``s * max|q| * max|k| + max|bias|`` exceeds
    1024 are computed in float64 (see :mod:`graphattn.nn._engine`); a fused backend that
    computes float32 scores declines such calls.

    **Non-finite values** stay where the graph puts them: a NaN or infinity in ``q[i]`` makes
    query ``i``'s output (and lse) NaN and nothing else; in ``k[j]`` or ``v[j]``, or a NaN bias,
    only the outputs of the queries that attend ``j`` (through that edge). In the backward, NaN
    reaches exactly the gradients that depend on a NaN output. A ``-inf`` bias removes its edge;
    a ``+inf`` bias is an error.

    Args:
        q: ``[Nq, H, D]`` queries. k: ``[Nk, H, D]`` keys. v: ``[Nk, H, Dv]`` values.
        graph: an :class:`~graphattn.AttentionGraph` (self-attention over its nodes; its tiling
            plan is cached on it) or an ``edge_index`` ``[2, E]`` (row 0 key ``< Nk``, row 1
            query ``< Nq``; ``Nq != Nk`` is cross-attention). An edge_index's checks and plan
            are cached for as long as the tensor lives and is not modified in place (by
            identity and version counter), so passing the same tensor every step costs them
            once.
        num_queries: optional check that ``q`` has this many rows.
        bias: ``[E, H]`` added to the scores of the edges, in the graph's edge order
            (``graph.edge_index`` order for an AttentionGraph).
        head_mask: bool ``[E, H]`` for an edge_index: edge ``e`` serves head ``h`` when
            ``head_mask[e, h]`` (an AttentionGraph carries its own ``head_mask``).
        scale: score scale, default ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities (``out`` scaled by ``1 / (1 - p)``),
            drawn from torch's default generator once per call and replayed in the backward.
        return_lse: also return ``lse`` ``[Nq, H]`` (float64 for float64 inputs, else
            float32), differentiable: the gradients through ``out`` and ``lse`` are exact. With
            :func:`merge_attention`, attentions over disjoint edge sets compose exactly.
        return_attention_weights: also return the probabilities ``[E, H]`` (before dropout;
            detached; one per listed edge, repeats included).
        tile, dense_threshold: tiling-plan options (see :mod:`graphattn.nn.plan`).

    Returns:
        ``out`` ``[Nq, H, Dv]`` in the dtype of ``q``; ``(out, lse)``, ``(out, weights)`` or
        ``(out, lse, weights)`` as asked. Half-precision inputs are computed in float32.

    >>> from graphattn import rules
    >>> q = k = v = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(0))
    >>> out, lse = graph_attention(q, k, v, rules.band(5, radius=1), return_lse=True)
    >>> out.shape, lse.shape
    (torch.Size([5, 2, 8]), torch.Size([5, 2]))
    >>> ei = torch.tensor([[0, 0, 1], [1, 1, 1]])   # query 1 attends key 0 twice and key 1 once
    >>> w = graph_attention(q, k, v, ei, return_attention_weights=True)[1]
    >>> torch.allclose(w[0] + w[1] + w[2], torch.ones(2)), torch.equal(w[0], w[1])
    (True, True)
    """
    _check_qkv(q, k, v)
    nq, H, D = q.shape
    nk = k.shape[0]
    if num_queries is not None and check_int("num_queries", num_queries, minimum=0) != nq:
        raise ValueError(f"expected q with num_queries = {num_queries} rows, got {nq}")
    multi = None
    if isinstance(graph, AttentionGraph):
        if graph.num_nodes != nq or graph.num_nodes != nk:
            raise ValueError(
                f"expected q and k with num_nodes = {graph.num_nodes} rows (an AttentionGraph is "
                f"self-attention over its nodes), got {nq} queries and {nk} keys")
        if graph.device != q.device:
            raise ValueError(f"expected graph on {q.device} like q, got {graph.device} (use graph.to(device))")
        if head_mask is not None:
            raise ValueError("expected head_mask only with an edge_index (an AttentionGraph carries its own)")
        # A structured graph (band, BigBird) runs without its edge list unless a step needs it.
        head_mask = graph.head_mask if graph.num_heads is not None else None
        edges = lambda: graph.edge_index  # noqa: E731
        E = graph.num_edges
    elif isinstance(graph, torch.Tensor):
        entry = _entry(graph, nq, nk, q.device)
        edge_index = graph if entry.ei is None else entry.ei
        multi = entry.multi
        edges = lambda: edge_index  # noqa: E731
        E = edge_index.shape[1]
    else:
        raise TypeError(f"expected graph to be an AttentionGraph or an edge_index tensor, got {type(graph).__name__}")
    if head_mask is not None and not isinstance(graph, AttentionGraph):
        head_mask = _check_head_mask(head_mask, E, H, q.device)
    elif head_mask is not None and head_mask.shape[1] != H:
        raise ValueError(f"expected {head_mask.shape[1]} heads for the graph's per-head layout, got {H}")
    if bias is not None:
        _check_bias(bias, E, H)
    scale = 1.0 / math.sqrt(D) if scale is None else check_float("scale", scale)
    dropout_p = check_float("dropout_p", dropout_p, minimum=0.0, maximum=1.0)
    if dropout_p == 1.0:
        raise ValueError("expected dropout_p < 1, got 1.0")
    if isinstance(graph, AttentionGraph):
        plan = get_plan(graph, nq, nk, tile=tile, dense_threshold=dense_threshold, edge_maps=bias is not None)
    else:
        plan = _edge_index_plan(entry, edge_index, head_mask, nq, nk, tile, dense_threshold)
    _check_memory(q, k, v, plan, E, nq, nk)

    # Non-finite inputs run sanitised, NaN written back where the graph puts it.
    poison = Poison.find(q, k, v, bias, edges, head_mask)
    qs, ks, vs, bs = (q, k, v, bias) if poison is None else poison.inputs(q, k, v, bias)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    run_bias = bs if multi is None else _coalesced_bias(bs, head_mask, multi, H, acc)
    bound = score_bound(qs, ks, scale, run_bias)
    drop_key = int(torch.randint(0, 2**62, (1,))) if dropout_p > 0 else 0
    backend = _backends.select(qs, ks, vs, plan=plan, bias=run_bias, dropout_p=dropout_p, score_bound=bound)
    out, lse = _backends.run(backend, qs, ks, vs, run_bias, plan, scale, dropout_p, drop_key, bound)
    lse = lse.to(acc)
    if poison is not None:
        out, lse = poison.output(out, lse)
    result = (out, lse) if return_lse else (out,)
    if return_attention_weights:
        w = attention_weights(qs.detach().to(acc), ks.detach().to(acc), None if bs is None else bs.detach().to(acc),
                              scale, lse.detach(), edges(), head_mask)
        result += (w.to(q.dtype),)
    return result[0] if len(result) == 1 else result


def merge_attention(outs, lses) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Combine partial attentions of the same queries over disjoint key sets, exactly.

    For parts ``p`` with outputs ``o_p`` ``[Nq, H, Dv]`` and log-sum-exps ``l_p`` ``[Nq, H]``
    (as :func:`graph_attention` returns with ``return_lse=True``), the attention over the union
    of their keys is

    .. math::
        \mathrm{lse} = \log \sum_p e^{l_p}, \qquad \mathrm{out} = \sum_p e^{l_p - \mathrm{lse}}\, o_p

    (the log-sum-exp rule flash attention uses across key blocks). A part where a query has no
    keys (``l_p = -inf``) contributes nothing; a query keyless in every part gets zeros and
    ``-inf``. Differentiable in every ``o_p`` and ``l_p``, NaN-free wherever the inputs are.
    Returns ``(out, lse)`` in the dtypes of the first part.

    >>> from graphattn import rules
    >>> g = rules.band(6, radius=2)
    >>> q = k = v = torch.randn(6, 1, 4, generator=torch.Generator().manual_seed(0))
    >>> left = g.edge_index[:, g.edge_index[0] < 3]; right = g.edge_index[:, g.edge_index[0] >= 3]
    >>> parts = [graph_attention(q, k, v, e, return_lse=True) for e in (left, right)]
    >>> out, lse = merge_attention(*zip(*parts))
    >>> torch.allclose(out, graph_attention(q, k, v, g))
    True
    """
    outs, lses = list(outs), list(lses)
    if not outs or len(outs) != len(lses):
        raise ValueError(f"expected as many outs as lses (at least one), got {len(outs)} and {len(lses)}")
    for p, (o, s) in enumerate(zip(outs, lses)):
        if not isinstance(o, torch.Tensor) or not isinstance(s, torch.Tensor):
            raise TypeError(f"expected outs[{p}] and lses[{p}] to be tensors, got {type(o).__name__} and "
                            f"{type(s).__name__}")
        if o.dim() != 3 or s.shape != o.shape[:2]:
            raise ValueError(f"expected outs[{p}] [Nq, H, Dv] and lses[{p}] [Nq, H], got {list(o.shape)} and "
                             f"{list(s.shape)}")
        if o.shape != outs[0].shape:
            raise ValueError(f"expected every part of shape {list(outs[0].shape)}, got {list(o.shape)} at {p}")
    L = torch.stack([s.to(lses[0].dtype) for s in lses])  # [P, Nq, H]
    top = L.detach().amax(0)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    # Keyless parts give exp(-inf) = 0; the double where keeps their gradient 0, not NaN.
    live = L > float("-inf")
    e = torch.where(live, torch.exp(torch.where(live, L, torch.zeros_like(L)) - top), torch.zeros_like(L))
    total = e.sum(0)
    has = total > 0
    safe_total = torch.where(has, total, torch.ones_like(total))
    lse = torch.where(has, top + torch.log(safe_total), torch.full_like(total, float("-inf")))
    w = e / safe_total  # [P, Nq, H]
    out = sum(w[p, ..., None].to(o.dtype) * o for p, o in enumerate(outs))
    return out, lse
