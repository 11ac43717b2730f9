"""The sharded plan: what one rank computes, receives and sends.

A rank owns the nodes ``[start, stop)`` (:func:`~graphattn.distributed.local_range`) and their
query rows. Its *extended* key space is the sorted list of the node ids it holds during the
attention step: its own rows plus every remote key its queries name. Because the list is
sorted by global id and the local block is contiguous, relabelling the local edges into it is
monotone, so the local edges keep the order of ``graph.query_slice(start, stop)``: an edge
bias ``[E_local, H]``, the relative ids and a per-head layout carry over unchanged.

Building the plan is a collective (every rank of the group calls :func:`shard_plan`): an
all-to-all of the request counts, an all-to-all of the requested ids, an all-gather of how many
rows each rank broadcasts and one broadcast of those ids per broadcasting rank. The plan is then
reused by every attention step (and is cached on an :class:`AttentionGraph` by
:func:`graphattn.distributed.graph_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from graphattn._validate import check_int
from graphattn.distributed.exchange import (all_gather_ints, all_to_all_ints, broadcast_ints,
                                            group_info)
from graphattn.distributed.partition import local_range, owner_of, remote_keys
from graphattn.graph import AttentionGraph

__all__ = ["ShardPlan", "shard_plan"]


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """One rank's share of a sharded attention step.

    Attributes:
        num_nodes, rank, world_size, start, stop: the sharding (``[start, stop)`` local nodes).
        global_ranks: the group's ranks as global ranks (collectives address sources by them).
        graph: the local attention graph over the extended rows (``num_extended`` nodes): the
            shard's edges relabelled, in the order of ``query_slice(start, stop)``; only the
            local rows ``[offset, offset + num_local)`` have edges.
        extended_ids: ``[num_extended]`` sorted global node ids of the extended rows.
        offset: position of the first local row in the extended rows.
        send_index: ``[sum(send_counts)]`` local rows sent by the all-to-all, grouped by
            destination rank; send_counts / recv_counts: rows per peer rank.
        recv_pos: ``[sum(recv_counts)]`` extended positions of the rows the all-to-all brings.
        bcast_counts: rows broadcast by each rank (rows every other rank needs);
        bcast_index: this rank's broadcast rows (local positions);
        bcast_pos: extended positions of the broadcast rows received, by source rank.
    """

    num_nodes: int
    rank: int
    world_size: int
    start: int
    stop: int
    global_ranks: tuple
    graph: AttentionGraph
    extended_ids: torch.Tensor
    offset: int
    send_index: torch.Tensor
    send_counts: tuple
    recv_counts: tuple
    recv_pos: torch.Tensor
    bcast_counts: tuple
    bcast_index: torch.Tensor
    bcast_pos: torch.Tensor

    @property
    def num_local(self) -> int:
        return self.stop - self.start

    @property
    def num_extended(self) -> int:
        return self.extended_ids.numel()

    @property
    def num_received(self) -> int:
        """Remote rows this rank receives per exchange (all-to-all plus broadcasts)."""
        return self.num_extended - self.num_local

    @property
    def num_recv_all_to_all(self) -> int:
        return sum(self.recv_counts)

    @property
    def num_sent(self) -> int:
        """Rows this rank puts on the wire per exchange (all-to-all copies plus broadcast rows)."""
        return sum(self.send_counts) + self.bcast_index.numel()

    @property
    def device(self) -> torch.device:
        return self.send_index.device

    def to(self, device) -> "ShardPlan":
        """A copy whose index tensors and local graph live on ``device``."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device) if isinstance(v, (torch.Tensor, AttentionGraph)) else v
        return ShardPlan(**values)

    def __repr__(self) -> str:
        return (f"ShardPlan(rank={self.rank}/{self.world_size}, nodes=[{self.start}, {self.stop}) of "
                f"{self.num_nodes}, edges={self.graph.num_edges}, received={self.num_received}, "
                f"sent={self.num_sent}, broadcast={self.bcast_index.numel()})")


def _local_rows(graph, start: int, stop: int, num_nodes: int) -> AttentionGraph:
    if isinstance(graph, AttentionGraph):
        return graph.query_slice(start, stop)
    local = graph(queries=range(start, stop))
    if not isinstance(local, AttentionGraph):
        raise TypeError(f"expected graph(queries=...) to return an AttentionGraph, got {type(local).__name__}")
    if local.num_nodes != num_nodes:
        raise ValueError(f"expected graph(queries=range({start}, {stop})) over num_nodes = {num_nodes} "
                         f"nodes, got {local.num_nodes}")
    q = local.edge_index[1]
    if q.numel() and (int(q.min()) < start or int(q.max()) >= stop):
        raise ValueError(f"expected graph(queries=range({start}, {stop})) to hold only the queries "
                         f"in [{start}, {stop}), got queries in [{int(q.min())}, {int(q.max())}]")
    return local


def shard_plan(graph, *, num_nodes: int | None = None, group=None, device=None) -> ShardPlan:
    """Build this rank's :class:`ShardPlan` (a collective: every rank of ``group`` calls it).

    Args:
        graph: an :class:`~graphattn.AttentionGraph` known on every rank (each rank keeps
            ``graph.query_slice(start, stop)``), or a rule callable that builds only this rank's
            rows, ``graph(queries=range(start, stop))`` (e.g.
            ``functools.partial(rules.band, n, radius=r)``), so no rank holds the whole graph.
        num_nodes: the node count ``n`` the rule builds (required for a callable; every node,
            extra nodes included).
        group: a ``torch.distributed`` process group (default the world group; without an
            initialised process group the plan is the single-process one).
        device: where the plan's index tensors and local graph live (default the graph's
            device; CPU for a callable).

    Rows needed by every other rank (``world_size >= 3``) are broadcast by their owner instead
    of sent in the all-to-all (see :mod:`graphattn.distributed.exchange`).
    """
    rank, world, granks = group_info(group)
    if isinstance(graph, AttentionGraph):
        n = graph.num_nodes
        if num_nodes is not None and check_int("num_nodes", num_nodes, minimum=0) != n:
            raise ValueError(f"expected num_nodes = graph.num_nodes = {n}, got {num_nodes}")
    elif callable(graph):
        if num_nodes is None:
            raise TypeError("expected num_nodes (the graph's node count) with a rule callable, got None")
        n = check_int("num_nodes", num_nodes, minimum=0)
    else:
        raise TypeError(f"expected graph to be an AttentionGraph or a rule callable taking "
                        f"queries=range(a, b), got {type(graph).__name__}")
    span = local_range(n, rank, world)
    start, stop = span.start, span.stop
    local = _local_rows(graph, start, stop, n)
    device = local.device if device is None else torch.device(device)
    local = local.to("cpu")  # planning runs on CPU index tensors; results move to `device`
    remote = remote_keys(local, start, stop)
    owner = owner_of(remote, n, world)
    recv_counts = torch.bincount(owner, minlength=world)
    empty = torch.empty(0, dtype=torch.int64)
    send_local = empty
    send_counts = torch.zeros(world, dtype=torch.int64)
    bcast_counts = [0] * world
    bcast_index, bcast_ids_in = empty, []
    if world > 1:
        # Round 1: how many rows each rank asks of me; round 2: which ones.
        send_counts = all_to_all_ints(recv_counts, [1] * world, [1] * world, group)
        asked = all_to_all_ints(remote, recv_counts.tolist(), send_counts.tolist(), group)
        send_local = asked - start
        dest = torch.repeat_interleave(torch.arange(world), send_counts)
        if world >= 3:
            # Rows every other rank asks for (global nodes): one broadcast instead of W-1 copies.
            requests = torch.bincount(send_local, minlength=stop - start)
            bcast_index = torch.nonzero(requests == world - 1).flatten()
        bcast_counts = all_gather_ints(bcast_index.numel(), world, group)
        for src, count in enumerate(bcast_counts):
            if count:
                ids = broadcast_ints(bcast_index + start if src == rank else None, count, granks[src], group)
                if src != rank:
                    bcast_ids_in.append(ids)
        if bcast_index.numel():
            is_b = torch.zeros(stop - start, dtype=torch.bool)
            is_b[bcast_index] = True
            keep = ~is_b[send_local]
            send_local, dest = send_local[keep], dest[keep]
            send_counts = torch.bincount(dest, minlength=world)
        if bcast_ids_in:
            keep = ~torch.isin(remote, torch.cat(bcast_ids_in))
            remote, owner = remote[keep], owner[keep]
            recv_counts = torch.bincount(owner, minlength=world)
    bcast_in = torch.cat(bcast_ids_in) if bcast_ids_in else empty
    ext = torch.cat([torch.arange(start, stop), remote, bcast_in]).sort().values
    offset = int(torch.searchsorted(ext, torch.tensor(start)))
    key, query = local.edge_index
    edge_index = torch.stack([torch.searchsorted(ext, key), query - start + offset])
    sub = AttentionGraph.from_edge_index(edge_index, ext.numel(), node_type=local.node_type[ext],
                                         edge_label=local.edge_label, relative=local.relative,
                                         head_mask=local.head_mask)
    plan = ShardPlan(
        num_nodes=n, rank=rank, world_size=world, start=start, stop=stop, global_ranks=tuple(granks),
        graph=sub, extended_ids=ext, offset=offset, send_index=send_local,
        send_counts=tuple(int(c) for c in send_counts.tolist()),
        recv_counts=tuple(int(c) for c in recv_counts.tolist()),
        recv_pos=torch.searchsorted(ext, remote), bcast_counts=tuple(bcast_counts),
        bcast_index=bcast_index, bcast_pos=torch.searchsorted(ext, bcast_in),
    )
    return plan if device == torch.device("cpu") else plan.to(device)
