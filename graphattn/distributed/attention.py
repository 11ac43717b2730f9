"""Sequence-parallel graph attention: each rank holds a shard of the nodes and its query rows."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from graphattn._validate import check_features, renamed_parameters
from graphattn.distributed._comm import all_gather_ints, group_info
from graphattn.distributed.faults import collective, records_failures
from graphattn.distributed.merge import merge_rows
from graphattn.distributed.partition import local_range
from graphattn.distributed.plan import ShardPlan, shard_plan
from graphattn.distributed.route import route_backward, route_forward
from graphattn.graph import AttentionGraph
from graphattn.nn import attention as _layer
from graphattn.nn.functional import graph_attention as _local_attention

__all__ = ["graph_attention", "GraphAttention", "resolve_plan"]


@records_failures
def resolve_plan(graph, num_local: int, *, group=None, device=None) -> ShardPlan:
    """The :class:`ShardPlan` for ``graph`` on this rank (a collective unless a plan is given).

    - a :class:`ShardPlan` is checked against the group and returned;
    - an :class:`AttentionGraph` gets its plan built once and cached on the graph, per group
      layout and device (so every rank must pass the same graph the same way, as with any
      collective);
    - a rule callable is called as ``graph(queries=range(start, stop))``; the node count is the
      sum of the ranks' ``num_local`` (one all-gather, which also lets every rank check every
      other rank's shard size, so a bad split fails on all ranks instead of hanging).
    """
    rank, world, granks = group_info(group)
    if isinstance(graph, ShardPlan):
        plan = graph
        if (plan.rank, plan.world_size, plan.global_ranks) != (rank, world, granks):
            raise ValueError(f"expected a plan for rank {rank} of {world} in this group, got rank "
                             f"{plan.rank} of {plan.world_size} (ranks {plan.global_ranks})")
    elif isinstance(graph, AttentionGraph):
        dev = torch.device(device) if device is not None else graph.device
        key = ("shard_plan", rank, world, granks, str(dev))
        plan = graph._cache.get(key)
        if plan is None:
            plan = shard_plan(graph, group=group, device=dev)
            graph._cache[key] = plan
    elif callable(graph):
        sizes = all_gather_ints(num_local, world, group) if world > 1 else [num_local]
        n = sum(sizes)
        want = [len(local_range(n, r, world)) for r in range(world)]
        if sizes != want:
            raise ValueError(f"expected the even split local_range({n}, rank, {world}) of the "
                             f"{n} nodes, i.e. shard sizes {want}, got {sizes}")
        plan = shard_plan(graph, num_nodes=n, group=group, device=device)
    else:
        raise TypeError(f"expected graph to be an AttentionGraph, a ShardPlan or a rule callable "
                        f"taking queries=range(a, b), got {type(graph).__name__}")
    if plan.num_local != num_local:
        raise ValueError(f"expected {plan.num_local} local rows (nodes [{plan.start}, {plan.stop}) of "
                         f"{plan.num_nodes} on rank {rank} of {world}), got {num_local}")
    return plan


def _check_shards(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"expected {name} of shape [n_local, H, D], got {list(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"expected q, k, v shards with the same rows, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if k.shape[1] != v.shape[1] or q.shape[1] != k.shape[1]:
        raise ValueError(f"expected q, k, v with the same heads, got {q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"expected q and k with the same head dim, got {q.shape[2]} and {k.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise TypeError(f"expected q, k, v of one floating-point dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


@records_failures
@renamed_parameters(return_weights="return_attention_weights")
def graph_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, graph, *, group=None,
                    bias: torch.Tensor | None = None, scale: float | None = None,
                    dropout_p: float = 0.0, return_attention_weights: bool = False):
    r"""Sequence-parallel exact graph attention (a collective: every rank of ``group`` calls it).

    Each rank owns the nodes ``local_range(n, rank, world_size)`` of the ``n`` nodes (tokens,
    then the graph's extra nodes), holds their q/k/v rows, and computes their outputs:

    .. math::
        \mathrm{out}_{i,h} = \sum_{j:(j,i)\in E} \operatorname{softmax}_j\left(s\,
        q_{i,h}\cdot k_{j,h} + b_{(j,i),h}\right) v_{j,h}, \qquad i \in [\mathrm{start},
        \mathrm{stop})

    Per pair of ranks, the plan (:func:`~graphattn.distributed.shard_plan`) moves whichever is
    smaller: the key/value rows the shard's queries name (the halo along the cut edges, one
    ``all_to_all_single``; rows every other rank needs by one broadcast from their owner), or
    the query rows that name many keys of one rank (global rows, span nodes): those are sent to
    the keys' owner, which returns partial outputs and log-sum-exps that the owner merges by the
    log-sum-exp rule. The local engine (:func:`graphattn.nn.graph_attention`) computes every
    part. The backward sends the gradients back along the same routes, so the outputs and
    gradients equal single-process attention on the whole graph (up to float summation
    order). Dropout masks are drawn per rank, so they differ from a single-process run's masks
    (the probability law is the same).

    Every rank passes the same kind of arguments (a bias on every rank or on none, the same
    ``return_attention_weights``): they decide which collectives run.

    Args:
        q, k, v: this rank's shards ``[n_local, H, D]``, ``[n_local, H, D]``, ``[n_local, H, Dv]``.
        graph: an :class:`~graphattn.AttentionGraph` over ``n`` nodes (the same on every rank;
            the plan is cached on it), a rule callable building only this rank's rows
            (``graph(queries=range(start, stop))``, e.g. ``functools.partial(rules.band, n,
            radius=r)``; ``n`` is the sum of the shard sizes), or a prebuilt
            :class:`~graphattn.distributed.ShardPlan` (reuse it across steps).
        group: process group (default the world group; without an initialised process group
            this is single-process attention).
        bias: ``[E_local, H]`` edge bias of this rank's edges, in the order of
            ``graph.query_slice(start, stop).edge_index``.
        scale, dropout_p: as :func:`graphattn.nn.graph_attention`.
        return_attention_weights: also return this rank's edge weights ``[E_local, H]`` (same order as bias).

    Returns:
        ``[n_local, H, Dv]`` outputs of this rank's queries (and the weights when asked).

    Raises:
        RankFailure: a collective failed because another rank raised, exited or hung (it is
            named; see :mod:`graphattn.distributed.faults`).

    Shapes:
        - **q**, **k**: ``[n_local, H, D]``; **v**: ``[n_local, H, Dv]``
        - **bias** (optional): ``[E_local, H]``
        - **output**: ``[n_local, H, Dv]``

    >>> import torch
    >>> from graphattn import rules
    >>> q = k = v = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(0))
    >>> out = graph_attention(q, k, v, rules.band(6, radius=1))  # no process group: one rank
    >>> out.shape
    torch.Size([6, 2, 4])
    """
    _check_shards(q, k, v)
    plan = resolve_plan(graph, q.shape[0], group=group, device=q.device)
    if plan.device != q.device:
        raise ValueError(f"expected the plan on {q.device} like q, got {plan.device} (use plan.to(device))")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (plan.graph.num_edges, q.shape[1]):
            raise ValueError(f"expected bias of shape [{plan.graph.num_edges}, {q.shape[1]}] (this rank's "
                             f"edges x heads), got {list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    return _sharded_attention(q, k, v, plan, group, bias, scale, dropout_p, return_attention_weights)


def _attend(q, k, v, index, bias, head_mask, groups, scale, dropout_p, weights):
    """The local engine on one part, ``(out, lse, weights)``; a per-head layout with a folded
    batch (``groups`` groups of heads) runs once per group."""
    H = q.shape[1] // groups
    outs, lses, ws = [], [], []
    for b in range(groups):
        hs = slice(b * H, (b + 1) * H)
        res = _local_attention(q[:, hs], k[:, hs], v[:, hs], index, num_queries=q.shape[0],
                               bias=None if bias is None else bias[:, hs], head_mask=head_mask, scale=scale,
                               dropout_p=dropout_p, return_lse=True, return_attention_weights=weights)
        outs.append(res[0])
        lses.append(res[1])
        ws.append(res[2] if weights else None)
    cat = (lambda ts: ts[0]) if groups == 1 else (lambda ts: torch.cat(ts, dim=1))  # noqa: E731
    return cat(outs), cat(lses), (cat(ws) if weights else None)


def _leaf(t, need):
    return None if t is None else (t.detach().requires_grad_() if need else t.detach())


def _zeros_if_none(g, like_shape, like):
    return like.new_zeros(like_shape) if g is None else g


class _ShardedStep(torch.autograd.Function):
    """One sharded attention step as a single autograd node: the forward runs the routes'
    collectives and the local parts (recording the parts' own autograd graphs), the backward
    runs the reversed collectives in one fixed order (partials, broadcast rows, queries, edge
    bias, halo) on
    every rank, whatever each rank's local work, so they always match."""

    @staticmethod
    def forward(ctx, q, k, v, bias, table, plan, group, scale, dropout_p, want_weights, groups):
        need = any(ctx.needs_input_grad[:5])
        D = q.shape[-1]
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        sc = plan.scatter
        kv_ext = route_forward(torch.cat([k, v], dim=-1), plan.halo, group, "key/value rows")
        q_s = b_s = None
        if sc is not None:
            q_s = route_forward(q, sc.queries, group, "query rows")
            if bias is not None:
                b_s = route_forward(bias, sc.edge_route, group, "edge bias")
        leaves = [_leaf(t, need) for t in (q, kv_ext, k, v, q_s, bias, b_s, table)]
        lq, lkv, lk, lv, lqs, lbias, lbs, ltable = leaves
        with torch.enable_grad() if need else contextlib.nullcontext():
            bias_h = None if lbias is None else lbias[plan.halo_edges]
            if ltable is not None and plan.halo_relative is not None:
                rel = ltable[plan.halo_relative]
                bias_h = rel if bias_h is None else bias_h + rel
            out_h, lse_h, w_h = _attend(lq, lkv[..., :D], lkv[..., D:], plan.halo_index, bias_h,
                                        plan.halo_head_mask, groups, scale, dropout_p, want_weights)
            parts = [(out_h, None), (lse_h, None)]
            if sc is not None:
                bias_s = lbs
                if ltable is not None and sc.relative is not None:
                    rel = ltable[sc.relative]
                    bias_s = rel if bias_s is None else bias_s + rel
                out_p, lse_p, w_p = _attend(lqs, lk, lv, sc.index, bias_s, sc.head_mask, groups, scale,
                                            dropout_p, want_weights)
                parts += [(out_p, None), (lse_p, None)]
        out = out_h.detach().clone()
        lse = lse_h.detach().clone()
        merge, blocks = None, []
        if sc is not None:
            payload = torch.cat([out_p.detach().to(acc), lse_p.detach().to(acc)[..., None]], dim=-1)
            recv = route_forward(payload, sc.partials, group, "partial results")
            mine = [_leaf(out_h[sc.rows].to(acc), need), _leaf(lse_h[sc.rows].to(acc), need), _leaf(recv, need)]
            with torch.enable_grad() if need else contextlib.nullcontext():
                o = torch.cat([mine[0], mine[2][..., :-1]])
                s = torch.cat([mine[1], mine[2][..., -1]])
                seg = torch.cat([torch.arange(sc.rows.numel(), device=q.device), sc.partial_row])
                m_out, m_lse = merge_rows(o, s, seg, sc.rows.numel())
            out[sc.rows] = m_out.detach().to(out.dtype)
            lse[sc.rows] = m_lse.detach()
            merge = (m_out, mine)
            blocks = _merge_broadcast_rows(plan, group, out_h, lse_h, out_p, lse_p, out, lse, acc, need)
        weights = None
        if want_weights:
            weights = _weights(plan, group, w_h, lse_h.detach(), lse, w_p if sc is not None else None,
                               lse_p.detach() if sc is not None else None, q)
        if need:
            ctx.plan, ctx.group, ctx.D, ctx.acc = plan, group, D, acc
            ctx.leaves, ctx.parts, ctx.merge, ctx.blocks = leaves, parts, merge, blocks
            ctx.shapes = [(t.shape, t.dtype) for t in (q, k, v)]
        weights = out.new_zeros(0) if weights is None else weights
        ctx.mark_non_differentiable(weights)
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        plan, group, D, acc = ctx.plan, ctx.group, ctx.D, ctx.acc
        sc = plan.scatter
        lq, lkv, lk, lv, lqs, lbias, lbs, ltable = ctx.leaves
        g = grad_out.contiguous()
        pairs = []
        (out_h, _), (lse_h, _) = ctx.parts[:2]
        if sc is not None:
            m_out, (l_oh, l_lh, l_recv) = ctx.merge
            d_oh, d_lh, d_recv = torch.autograd.grad(m_out, [l_oh, l_lh, l_recv], g[sc.rows].to(acc),
                                                     allow_unused=True)
            d_recv = _zeros_if_none(d_recv, l_recv.shape, l_recv)
            d_payload = route_backward(d_recv, sc.partials, group, "partial results")
            g = g.clone()
            g[sc.rows] = _zeros_if_none(d_oh, l_oh.shape, l_oh).to(g.dtype)
            d_lse_h = torch.zeros_like(lse_h)
            d_lse_h[sc.rows] = _zeros_if_none(d_lh, l_lh.shape, l_lh).to(lse_h.dtype)
            (out_p, _), (lse_p, _) = ctx.parts[2:]
            d_out_p = d_payload[..., :-1].to(out_p.dtype)
            d_lse_p = d_payload[..., -1].to(lse_p.dtype)
            _merge_broadcast_rows_backward(plan, group, ctx.blocks, grad_out, g, d_lse_h, d_out_p, d_lse_p, acc)
            pairs += [(lse_h, d_lse_h), (out_p, d_out_p), (lse_p, d_lse_p)]
        pairs.append((out_h, g))
        pairs = [(t, d) for t, d in pairs if t.requires_grad]
        inputs = [t for t in ctx.leaves if t is not None and t.requires_grad]
        grads = dict(zip(map(id, inputs), torch.autograd.grad(
            [t for t, _ in pairs], inputs, [d for _, d in pairs], allow_unused=True) if pairs and inputs
            else [None] * len(inputs)))
        grad_of = lambda t: None if t is None else grads.get(id(t))  # noqa: E731
        (q_shape, q_dtype), (k_shape, _), (v_shape, _) = ctx.shapes
        dq = _zeros_if_none(grad_of(lq), q_shape, g)
        dbias = grad_of(lbias)
        if sc is not None:
            dq_s = _zeros_if_none(grad_of(lqs), lqs.shape, lqs)
            dq = dq + route_backward(dq_s, sc.queries, group, "query rows")
            if lbs is not None:
                db_s = route_backward(_zeros_if_none(grad_of(lbs), lbs.shape, lbs), sc.edge_route, group,
                                      "edge bias")
                dbias = db_s if dbias is None else dbias + db_s
        dkv = route_backward(_zeros_if_none(grad_of(lkv), lkv.shape, lkv), plan.halo, group, "key/value rows")
        dk, dv = dkv[..., :D], dkv[..., D:]
        if grad_of(lk) is not None:
            dk = dk + grad_of(lk)
        if grad_of(lv) is not None:
            dv = dv + grad_of(lv)
        if lbias is not None and dbias is None:
            dbias = torch.zeros_like(lbias)
        dtable = grad_of(ltable)
        if ltable is not None and dtable is None:
            dtable = torch.zeros_like(ltable)
        return dq, dk, dv, dbias, dtable, None, None, None, None, None, None


def _contribution(o, lse, top):
    """``[e * o, e]`` with ``e = exp(lse - top)`` (0 where ``lse = -inf``): a partial attention
    as a term of the sums that broadcast rows are merged by."""
    live = lse > float("-inf")
    e = torch.where(live, torch.exp(torch.where(live, lse, torch.zeros_like(lse)) - top), torch.zeros_like(lse))
    return torch.cat([e[..., None] * o, e[..., None]], dim=-1)


def _merge_broadcast_rows(plan, group, out_h, lse_h, out_p, lse_p, out, lse, acc, need):
    """Merge the rows the query route broadcast (rows every rank computes a part of, such as
    global rows) by two collectives per broadcasting rank instead of ``world_size - 1`` partial
    results: an all-reduce of the parts' maximum log-sum-exp ``m``, then a reduce of the sums
    ``sum_p [e_p o_p, e_p]``, ``e_p = exp(l_p - m)``, to the row's owner, which sets
    ``out = sum e_p o_p / sum e_p`` and ``lse = m + log sum e_p`` (the log-sum-exp rule;
    ``m`` cancels, so it is a constant of the gradient). Writes ``out``, ``lse`` of the owner's
    rows; returns what the backward needs."""
    sc = plan.scatter
    route = sc.queries
    blocks, lo = [], 0
    for src, count in enumerate(route.bcast_counts):
        if not count:
            continue
        owner = src == route.rank
        if owner:
            where = route.bcast_index
            o, l_ = out_h[where], lse_h[where]
        else:
            where = route.bcast_pos[lo:lo + count]
            lo += count
            o, l_ = out_p[where], lse_p[where]
        lo_leaf, ll_leaf = _leaf(o.to(acc), need), _leaf(l_.to(acc), need)
        top = ll_leaf.detach().clone()
        with collective(f"broadcast rows of rank {route.global_ranks[src]}: all_reduce", group):
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        with torch.enable_grad() if need else contextlib.nullcontext():
            c = _contribution(lo_leaf, ll_leaf, top)
        total = c.detach().clone()
        with collective(f"broadcast rows of rank {route.global_ranks[src]}: reduce", group):
            dist.reduce(total, dst=route.global_ranks[src], op=dist.ReduceOp.SUM, group=group)
        merged = leaf = None
        if owner:
            leaf = _leaf(total, need)
            with torch.enable_grad() if need else contextlib.nullcontext():
                S = leaf[..., -1]
                has = S > 0
                safe = torch.where(has, S, torch.ones_like(S))
                merged = leaf[..., :-1] / safe[..., None]
            out[where] = merged.detach().to(out.dtype)
            lse[where] = torch.where(has, top + torch.log(safe), torch.full_like(S, float("-inf"))).to(lse.dtype)
        blocks.append((src, where, c, lo_leaf, ll_leaf, leaf, merged))
    return blocks


def _merge_broadcast_rows_backward(plan, group, blocks, grad_out, g, d_lse_h, d_out_p, d_lse_p, acc):
    """The adjoint of :func:`_merge_broadcast_rows`: the owner's gradient of the sums goes to
    every rank by a broadcast (the adjoint of the reduce), each rank backpropagates its term.
    Adds into ``g`` / ``d_lse_h`` (owner's rows) and ``d_out_p`` / ``d_lse_p`` (parts)."""
    route = plan.scatter.queries
    for src, where, c, lo_leaf, ll_leaf, leaf, merged in blocks:
        owner = src == route.rank
        if owner:
            (d_total,) = torch.autograd.grad(merged, leaf, grad_out[where].to(acc))
            buf = d_total.contiguous()
        else:
            buf = c.new_empty(c.shape)
        with collective(f"broadcast rows of rank {route.global_ranks[src]} (backward): broadcast", group):
            dist.broadcast(buf, src=route.global_ranks[src], group=group)
        d_o, d_l = torch.autograd.grad(c, [lo_leaf, ll_leaf], buf, allow_unused=True)
        d_o = _zeros_if_none(d_o, lo_leaf.shape, lo_leaf)
        d_l = _zeros_if_none(d_l, ll_leaf.shape, ll_leaf)
        if owner:
            g[where] = d_o.to(g.dtype)
            d_lse_h[where] = d_lse_h[where] + d_l.to(d_lse_h.dtype)
        else:
            d_out_p[where] = d_out_p[where] + d_o.to(d_out_p.dtype)
            d_lse_p[where] = d_lse_p[where] + d_l.to(d_lse_p.dtype)


def _weights(plan, group, w_h, lse_h, lse, w_p, lse_p, q):
    """This rank's edge weights ``[E_local, H]``: each part's weights rescaled from its own
    log-sum-exp to the merged one. The merged log-sum-exps of moved rows travel the query route
    to the ranks that computed their parts, which rescale there and send the weights back along
    the edge route."""
    E = plan.graph.num_edges
    w = w_h.new_zeros((E, w_h.shape[1]))
    qh = plan.halo_index[1]
    w[plan.halo_edges] = w_h * torch.exp(lse_h[qh] - lse[qh]).to(w_h.dtype)
    sc = plan.scatter
    if sc is not None:
        merged = route_forward(lse.contiguous(), sc.queries, group, "log-sum-exps for the weights")
        qp = sc.index[1]
        w_p = w_p * torch.exp(lse_p[qp] - merged[qp]).to(w_p.dtype)
        back = route_backward(w_p, sc.edge_route, group, "attention weights")  # [E, H], moved edges filled
        w[sc.edges] = back[sc.edges]
    # A keyless row has no edges: exp(-inf - -inf) never reaches a weight.
    return w.to(q.dtype)


def _sharded_attention(q, k, v, plan: ShardPlan, group, bias, scale, dropout_p, return_attention_weights,
                       batch: int = 1, relative_table: torch.Tensor | None = None):
    """One sharded step. ``batch > 1``: the heads axis holds ``batch`` groups of heads (a folded
    batch); a per-head layout then runs the engine once per group, still over a single
    exchange, so the backward has one collective sequence per call whatever the batch.
    ``relative_table`` ``[R, H]``: a per-head bias looked up by the graph's relative ids, on the
    rank that computes each edge (only ids travel, at planning)."""
    groups = batch if plan.graph.head_mask is not None else 1
    out, weights = _ShardedStep.apply(q, k, v, bias, relative_table, plan, group, scale, dropout_p,
                                      bool(return_attention_weights), groups)
    return (out, weights) if return_attention_weights else out


class GraphAttention(_layer.GraphAttention):
    r"""Sequence-parallel :class:`graphattn.nn.GraphAttention`: the same parameters (a
    single-process layer's ``state_dict`` loads as is), applied to this rank's shard.

    The projections are per node, so they run on the shard; only the attention step
    communicates (:func:`graph_attention`). Relative-position biases (``num_relative``) and
    per-head layouts work as in the single-process layer. Parameter gradients are this rank's
    share: sum them over ranks (``DistributedDataParallel`` or an all-reduce) for the gradient
    of the whole sequence.

    Args: as :class:`graphattn.nn.GraphAttention` (``kdim``/``vdim`` are unused: the layer is
    self-attention over the sharded nodes), plus ``group``: the process group (default the
    world group; a ``group`` given to :meth:`forward` wins).

    Shapes:
        - **x**: ``[n_local, E]`` or ``[B, n_local, E]``, this rank's rows
        - **graph**: AttentionGraph over ``n`` nodes, a rule callable or a ShardPlan
        - **edge_bias** (optional): ``[E_local, H]``
        - **output**: like ``x``; with ``return_attention_weights=True`` also the weights ``[E_local, H]``
          (``[B, E_local, H]`` for batched input)
    """

    def __init__(self, embed_dim: int, num_heads: int, *, group=None, **kwargs):
        super().__init__(embed_dim, num_heads, **kwargs)
        self.group = group

    @records_failures
    @renamed_parameters(return_attention="return_attention_weights")
    def forward(self, x: torch.Tensor, graph, *, group=None, edge_bias: torch.Tensor | None = None,
                return_attention_weights: bool = False):
        group = self.group if group is None else group
        x, batched = check_features(x, self.embed_dim)  # x: [B, n_local, E]
        B, N, H, D = x.shape[0], x.shape[1], self.num_heads, self.head_dim
        plan = resolve_plan(graph, N, group=group, device=x.device)
        q = self.q_proj(x).view(B, N, H, D)
        k = self.k_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        # The relative bias is looked up where each edge is computed (a moved edge on the rank
        # holding its key), so only relative ids travel, once, at planning.
        table = self._relative_table(plan.graph)
        E = plan.graph.num_edges
        if edge_bias is not None and edge_bias.shape != (E, H):
            raise ValueError(f"expected edge_bias of shape [{E}, {H}], got {list(edge_bias.shape)}")
        dropout = self.dropout if self.training else 0.0
        # Fold the batch into the heads: one exchange per call whatever the batch size.
        fb = None if edge_bias is None else edge_bias.repeat(1, B)
        ft = None if table is None else table.repeat(1, B)
        res = _sharded_attention(_layer.fold_batch(q), _layer.fold_batch(k), _layer.fold_batch(v), plan, group, fb,
                                 None, dropout, return_attention_weights, batch=B, relative_table=ft)
        out, weights = _layer.unfold_batch(res if return_attention_weights else (res, None), B)
        return self._output(out, weights, batched, return_attention_weights)

    def _relative_table(self, graph: AttentionGraph):
        """``[num_relative, H]`` relative-bias table when the layer and the graph have relative
        ids (checked against ``num_relative`` on this rank's edges), else None."""
        if self.relative_bias is None or graph.relative is None:
            return None
        rel = graph.relative
        if rel.numel() and int(rel.max()) >= self.num_relative:
            raise ValueError(f"expected graph.relative ids < num_relative = {self.num_relative}, "
                             f"got {int(rel.max())}")
        return self.relative_bias.weight
