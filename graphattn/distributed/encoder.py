"""The sparse encoder on a sharded sequence: :class:`graphattn.models.SparseEncoder` whose
attention layers are sequence-parallel.

Everything in a pre-norm encoder layer but the attention is per node (LayerNorm, the FFN, the
residuals), so it runs on the shard as is; only the attention step exchanges rows
(:func:`graphattn.distributed.graph_attention`). Parameters and their names are those of the
single-process encoder, so a ``state_dict`` moves between the two.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from graphattn._validate import check_bool, check_features, check_int
from graphattn.distributed.attention import GraphAttention, resolve_plan
from graphattn.distributed._comm import all_gather_ints, group_info
from graphattn.distributed.faults import records_failures
from graphattn.distributed.partition import local_range
from graphattn.graph import AttentionGraph
from graphattn.models.encoder import GraphRule, SparseEncoder

__all__ = ["ShardedSparseEncoder", "token_range"]


def token_range(num_tokens: int, num_global: int, rank: int, world_size: int) -> range:
    """The input tokens rank ``rank`` passes to :class:`ShardedSparseEncoder`.

    The encoder's nodes are the ``n`` tokens followed by its ``num_global`` global nodes, split
    evenly over the ranks (:func:`local_range` of ``n + num_global``); a rank passes the tokens
    of its node range, and the encoder appends the global nodes that fall in it (the last rank's
    range holds them, unless they spill over several ranks).

    >>> [token_range(10, 2, r, 3) for r in range(3)]
    [range(0, 4), range(4, 8), range(8, 10)]
    """
    num_tokens = check_int("num_tokens", num_tokens, minimum=0)
    num_global = check_int("num_global", num_global, minimum=0)
    span = local_range(num_tokens + num_global, rank, world_size)
    return range(min(span.start, num_tokens), min(span.stop, num_tokens))


class ShardedSparseEncoder(SparseEncoder):
    r"""Sequence-parallel :class:`~graphattn.models.SparseEncoder` (a collective: every rank of
    ``group`` runs the forward and the backward together).

    Rank ``r`` passes the tokens :func:`token_range` ``(n, num_global, r, W)`` and gets their
    outputs. Each layer's graph is sharded as in :func:`graph_attention`: a
    :class:`~graphattn.models.GraphRule` of a position rule builds only the rank's query rows
    (``rule(n + ..., queries=range(start, stop))``), an AttentionGraph is sliced, another
    callable ``n -> AttentionGraph`` is built whole on every rank. Shard plans are cached per
    (schedule entry, length, device), like the encoder's graphs.

    Args: as :class:`~graphattn.models.SparseEncoder` except ``attentions`` (every layer is a
    sequence-parallel :class:`~graphattn.distributed.GraphAttention`) and ``reversible`` (not
    supported: recomputation would replay the collectives), plus ``group``.

    Shapes:
        - **x**: ``[n_local, E]`` or ``[B, n_local, E]``, the tokens of :func:`token_range`
        - **output**: like ``x``; with ``return_global=True`` also this rank's global nodes'
          states ``[g_local, E]`` (``g_local`` is 0 on ranks that own no global node)
    """

    def __init__(self, embed_dim: int, num_heads: int, *, graphs, num_layers: int | None = None,
                 ff_dim: int | None = None, dropout: float = 0.0, num_relative: int | None = None,
                 num_global: int = 0, chunked_ff: int | None = None, group=None):
        if isinstance(graphs, Sequence) and not isinstance(graphs, (str, bytes)):
            count = len(graphs)
        else:
            count = check_int("num_layers", num_layers, minimum=1) if num_layers is not None else 1
        attentions = [GraphAttention(embed_dim, num_heads, dropout=dropout, num_relative=num_relative,
                                     group=group) for _ in range(max(count, 1))]
        super().__init__(embed_dim, num_heads, graphs=graphs, num_layers=num_layers, ff_dim=ff_dim,
                         dropout=dropout, num_relative=num_relative, num_global=num_global,
                         chunked_ff=chunked_ff, attentions=attentions)
        for p, g in enumerate(self.graphs):
            if g is None:
                raise ValueError(f"expected graphs[{p}] to be an AttentionGraph or a callable: the "
                                 "sharded encoder has no content-based attention")
        self.group = group
        self._plan_cache: dict = {}

    def _plan(self, layer: int, n: int, n_local: int, device):
        """The shard plan of layer ``layer`` at ``n`` tokens (cached; a collective when built)."""
        entry = self.graphs[layer]
        key = (id(entry), n, str(device))  # layers sharing one entry share one plan
        plan = self._plan_cache.get(key)
        if plan is None:
            total = n + self.num_global
            if isinstance(entry, GraphRule):
                source = functools.partial(entry.rule, n, **entry.params)  # only this rank's rows
            else:
                source = self.graph(layer, n, device)  # validated, whole graph
            if isinstance(source, AttentionGraph) and source.num_nodes != total:
                raise ValueError(f"expected graphs[{layer}] over {total} nodes, got {source.num_nodes}")
            plan = resolve_plan(source, n_local, group=self.group, device=device)
            if plan.num_nodes != total:
                raise ValueError(f"expected graphs[{layer}] over n + num_global = {total} nodes, "
                                 f"got {plan.num_nodes}")
            self._plan_cache[key] = plan
        return plan

    @records_failures
    def forward(self, x: torch.Tensor, *, return_global: bool = False):
        return_global = check_bool("return_global", return_global)
        check_features(x, self.embed_dim)  # [n_local, E] or [B, n_local, E]
        rank, world, _ = group_info(self.group)
        t_local = x.shape[-2]
        sizes = all_gather_ints(t_local, world, self.group) if world > 1 else [t_local]
        n = sum(sizes)
        want = [len(token_range(n, self.num_global, r, world)) for r in range(world)]
        if sizes != want:
            raise ValueError(f"expected the token shards token_range({n}, {self.num_global}, rank, "
                             f"{world}) of sizes {want}, got {sizes}")
        span = local_range(n + self.num_global, rank, world)
        g0, g1 = max(span.start, n) - n, max(span.stop, n) - n  # this rank's global nodes
        if g1 > g0:
            glob = self.global_embeddings[g0:g1].to(x.dtype)
            glob = glob.expand(x.shape[0], -1, -1) if x.dim() == 3 else glob
            x = torch.cat([x, glob], dim=-2)
        for l, layer in enumerate(self.layers):
            x = layer(x, self._plan(l, n, x.shape[-2], x.device))
        x = self.norm(x)
        tokens = x[..., :t_local, :]
        if return_global:
            return tokens, x[..., t_local:, :]
        return tokens
