"""Sequence-parallel graph attention: each rank holds a shard of the nodes and its query rows."""

from __future__ import annotations

import torch

from graphattn._validate import renamed_parameters

from graphattn.distributed.exchange import all_gather_ints, exchange_rows, group_info
from graphattn.distributed.partition import local_range
from graphattn.distributed.plan import ShardPlan, shard_plan
from graphattn.graph import AttentionGraph
from graphattn.nn import attention as _layer
from graphattn.nn.functional import graph_attention as _local_attention

__all__ = ["graph_attention", "GraphAttention", "resolve_plan"]


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

    The key/value rows of remote keys (the halo along the cut edges) arrive by one
    ``all_to_all_single`` (rows every other rank needs, such as global nodes, by one broadcast
    from their owner); the local engine (:func:`graphattn.nn.graph_attention`) then runs on the
    shard's queries. The backward returns key/value gradients along the same plan, so the
    outputs and gradients equal single-process attention on the whole graph (up to float
    summation order). Dropout masks are drawn per rank, so they differ from a single-process
    run's masks (the probability law is the same).

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
    return _sharded_attention(q, k, v, plan, group, bias, scale, dropout_p, return_attention_weights)


class _AttachedZeros(torch.autograd.Function):
    """Zeros of ``shape`` whose backward sends zero gradients to ``inputs``: keeps an edgeless
    shard's output attached to its exchange (whose backward is a collective)."""

    @staticmethod
    def forward(ctx, shape, *inputs):
        ctx.shapes = [(t.shape, t.dtype, t.device) for t in inputs]
        return inputs[0].new_zeros(shape)

    @staticmethod
    def backward(ctx, grad):
        return (None, *(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.shapes))


def _sharded_attention(q, k, v, plan: ShardPlan, group, bias, scale, dropout_p, return_attention_weights,
                       batch: int = 1):
    """Exchange once, attend locally. ``batch > 1``: the heads axis holds ``batch`` groups of
    heads (a folded batch); a per-head layout then runs the engine once per group, still over a
    single exchange, so the backward has one collective step per call whatever the batch."""
    n_local, BH, D = q.shape
    Dv = v.shape[-1]
    # One exchange carries keys and values together: half the collectives, same bytes.
    kv = exchange_rows(torch.cat([k, v], dim=-1), plan, group)
    if plan.graph.num_edges == 0:
        # No edges on this shard: zeros, still attached to the exchange so the backward
        # collectives run on this rank too (other ranks may need its gradients back).
        out = _AttachedZeros.apply((n_local, BH, Dv), q, kv)
        weights = q.new_zeros(0, BH)
        return (out, weights) if return_attention_weights else out
    k_ext, v_ext = kv[..., :D], kv[..., D:]
    # Queries live in the local block of the extended rows; the other rows have no edges as
    # queries, so zero padding there costs no attention work (the plan has no tiles for them).
    after = plan.num_extended - plan.offset - n_local
    q_ext = torch.cat([q.new_zeros(plan.offset, BH, D), q, q.new_zeros(after, BH, D)])
    groups = batch if plan.graph.head_mask is not None else 1
    H = BH // groups
    outs, ws = [], []
    for b in range(groups):
        hs = slice(b * H, (b + 1) * H)
        res = _local_attention(q_ext[:, hs], k_ext[:, hs], v_ext[:, hs], plan.graph,
                               bias=None if bias is None else bias[:, hs], scale=scale,
                               dropout_p=dropout_p, return_attention_weights=return_attention_weights)
        o, w = res if return_attention_weights else (res, None)
        outs.append(o[plan.offset:plan.offset + n_local])
        ws.append(w)
    out = outs[0] if groups == 1 else torch.cat(outs, dim=1)
    if not return_attention_weights:
        return out
    return out, (ws[0] if groups == 1 else torch.cat(ws, dim=1))


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

    @renamed_parameters(return_attention="return_attention_weights")
    def forward(self, x: torch.Tensor, graph, *, group=None, edge_bias: torch.Tensor | None = None,
                return_attention_weights: bool = False):
        group = self.group if group is None else group
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
            raise ValueError(f"expected x of shape [n_local, E] or [B, n_local, E], got "
                             f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"expected x with last dim embed_dim = {self.embed_dim}, got {x.shape[-1]}")
        batched = x.dim() == 3
        B = x.shape[0] if batched else 1
        N, H, D = x.shape[-2], self.num_heads, self.head_dim
        plan = resolve_plan(graph, N, group=group, device=x.device)
        q = self.q_proj(x).view(B, N, H, D)
        k = self.k_proj(x).view(B, N, H, D)
        v = self.v_proj(x).view(B, N, H, D)
        bias = self._edge_bias(plan.graph, edge_bias, plan.graph.num_edges)
        dropout = self.dropout if self.training else 0.0
        # Fold the batch into the heads: one exchange per call whatever the batch size.
        fb = None if bias is None else bias.repeat(1, B)
        res = _sharded_attention(_layer.fold_batch(q), _layer.fold_batch(k), _layer.fold_batch(v), plan, group, fb,
                                 None, dropout, return_attention_weights, batch=B)
        out, weights = _layer.unfold_batch(res if return_attention_weights else (res, None), B)
        return self._output(out, weights, batched, return_attention_weights)
