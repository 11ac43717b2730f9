"""Sequence-parallel graph attention on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

When a sequence or a graph no longer fits one device, shard its nodes over processes: rank
``r`` of ``W`` owns the contiguous nodes :func:`local_range` ``(n, r, W)`` (an even split; the
first ``n % W`` ranks own one node more; ``n`` counts every node, so extra nodes, which follow
the tokens, belong to the last ranks) and their query rows. :func:`graph_attention` exchanges
exactly the key/value rows each shard's edges need (all-to-all; rows every rank needs, such as
global nodes, by one broadcast from their owner) and runs the local engine; the backward sends
the gradients back along the same plan.

- :func:`local_range`, :func:`owner_of`, :func:`remote_keys`, :func:`halo_sizes`: partitioning (pure).
- :class:`ShardPlan`, :func:`shard_plan`: one rank's plan (a collective to build; reusable).
- :func:`exchange_rows`: the differentiable halo exchange.
- :func:`graph_attention`, :class:`GraphAttention`: attention on shards.
- :class:`ShardedSparseEncoder`, :func:`token_range`: the sparse encoder on a sharded sequence.
- :func:`spawn`: run a function on local gloo processes (CPU testing).
"""

from graphattn.distributed.attention import GraphAttention, graph_attention, resolve_plan
from graphattn.distributed.encoder import ShardedSparseEncoder, token_range
from graphattn.distributed.exchange import exchange_rows
from graphattn.distributed.launch import spawn
from graphattn.distributed.partition import halo_sizes, local_range, owner_of, remote_keys
from graphattn.distributed.plan import ShardPlan, shard_plan

__all__ = [
    "local_range", "owner_of", "remote_keys", "halo_sizes",
    "ShardPlan", "shard_plan", "exchange_rows", "resolve_plan",
    "graph_attention", "GraphAttention", "ShardedSparseEncoder", "token_range", "spawn",
]
