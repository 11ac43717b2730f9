"""Sequence-parallel graph attention on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

When a sequence or a graph no longer fits one device, shard its nodes over processes: rank
``r`` of ``W`` owns the contiguous nodes :func:`local_range` ``(n, r, W)`` (an even split; the
first ``n % W`` ranks own one node more; ``n`` counts every node, so extra nodes, which follow
the tokens, belong to the last ranks) and their query rows. :func:`graph_attention` moves, per
pair of ranks, the smaller side: the key/value rows a shard's edges need (all-to-all; rows every
rank needs, such as global nodes, by one broadcast from their owner), or the query rows that
name many of another rank's keys (global rows), whose partial results come back and are merged
exactly by the log-sum-exp rule. The backward sends the gradients back along the same routes.
A rank that raises, exits or hangs is named on every other rank (:class:`RankFailure`) instead
of leaving them waiting.

- :func:`local_range`, :func:`owner_of`, :func:`remote_keys`, :func:`halo_sizes`,
  :func:`key_demand`, :func:`move_thresholds`, :func:`plan_traffic`: partitioning (pure).
- :class:`ShardPlan`, :func:`shard_plan`: one rank's plan (a collective to build; reusable).
- :func:`exchange_rows`: the differentiable halo exchange.
- :func:`graph_attention`, :class:`GraphAttention`: attention on shards.
- :class:`ShardedSparseEncoder`, :func:`token_range`: the sparse encoder on a sharded sequence.
- :class:`RankFailure`, :func:`configure_faults`, :func:`record_failure`: failures that fail fast.
- :func:`spawn`, :class:`SpawnError`: run a function on local gloo processes (CPU testing).
"""

from graphattn.distributed.attention import GraphAttention, graph_attention, resolve_plan
from graphattn.distributed.encoder import ShardedSparseEncoder, token_range
from graphattn.distributed.exchange import exchange_rows
from graphattn.distributed.faults import RankFailure, configure_faults, record_failure
from graphattn.distributed.launch import SpawnError, spawn
from graphattn.distributed.partition import (halo_sizes, key_demand, local_range, move_thresholds, owner_of,
                                             remote_keys)
from graphattn.distributed.plan import ShardPlan, graph_fingerprint, shard_plan
from graphattn.distributed.traffic import plan_traffic

__all__ = [
    "local_range", "owner_of", "remote_keys", "halo_sizes", "key_demand", "move_thresholds", "plan_traffic",
    "ShardPlan", "shard_plan", "graph_fingerprint", "exchange_rows", "resolve_plan",
    "graph_attention", "GraphAttention", "ShardedSparseEncoder", "token_range",
    "RankFailure", "configure_faults", "record_failure", "spawn", "SpawnError",
]
