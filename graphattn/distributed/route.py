"""Routes: which rows one exchange moves between the ranks, and the exchange itself.

A :class:`Route` is planned once (ids travel at planning time) and then moves the rows of a
tensor every step: rank ``r``'s source rows ``x`` ``[num_in, ...]`` land in a buffer
``[num_out, ...]`` on the ranks that asked for them. The sharded attention uses three routes
per step (see :mod:`graphattn.distributed.plan`): key/value rows to the queries that need them
(the halo), query rows (and their edges' bias) to the ranks that hold their keys, and partial
results back to the queries' owners.

Every transfer is a ``torch.distributed`` collective, so the same code runs on gloo (CPU
tensors) and NCCL (CUDA tensors):

- forward: one ``all_to_all_single`` moves each row to each rank that needs it; rows that every
  other rank needs (global tokens and nodes) leave their owner once, by one ``broadcast`` per
  owning rank, instead of as ``world_size - 1`` copies inside the all-to-all;
- backward (:func:`route_backward`): the same route reversed: an ``all_to_all_single``
  returns the gradient rows to their sources, which ``index_add`` them, and a ``reduce`` sums
  the gradients of the broadcast rows on their owner.

Every rank calls the same collectives in the same order (the all-to-all, then one broadcast
per broadcasting rank in rank order), also ranks that send or receive nothing, which keeps the
collectives matched. A route that moves nothing on any rank (``active`` false, known to every
rank at planning) runs no collective at all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from graphattn.distributed._comm import all_gather_ints, broadcast_ints
from graphattn.distributed.faults import collective

__all__ = ["Route", "route_forward", "route_backward", "plan_broadcasts"]


@dataclass(frozen=True, eq=False)
class Route:
    """The rows one exchange moves (this rank's part of a collective plan).

    Attributes:
        rank, world_size, global_ranks: the group (collectives address sources by global rank).
        num_in: rows of the source tensor on this rank; num_out: rows of the buffer it fills.
        keep_index, keep_pos: source rows copied into the buffer locally (no communication).
        send_index: ``[sum(send_counts)]`` source rows of the all-to-all, grouped by destination.
        send_counts, recv_counts: rows sent to / received from each rank by the all-to-all.
        recv_pos: ``[sum(recv_counts)]`` buffer positions of the rows the all-to-all brings.
        bcast_counts: rows broadcast by each rank (rows every other rank needs).
        bcast_index: this rank's broadcast rows (source rows).
        bcast_pos: buffer positions of the broadcast rows received, in source-rank order.
        active: whether any rank of the group moves a row (else the exchange is local).
    """

    rank: int
    world_size: int
    global_ranks: tuple
    num_in: int
    num_out: int
    keep_index: torch.Tensor
    keep_pos: torch.Tensor
    send_index: torch.Tensor
    send_counts: tuple
    recv_counts: tuple
    recv_pos: torch.Tensor
    bcast_counts: tuple
    bcast_index: torch.Tensor
    bcast_pos: torch.Tensor
    active: bool

    @property
    def num_received(self) -> int:
        """Rows this rank receives per exchange (all-to-all plus broadcasts)."""
        return sum(self.recv_counts) + self.bcast_pos.numel()

    @property
    def num_sent(self) -> int:
        """Rows this rank puts on the wire per exchange (all-to-all copies plus broadcast rows)."""
        return sum(self.send_counts) + self.bcast_index.numel()

    @property
    def num_returned(self) -> int:
        """Gradient rows this rank receives in the backward: one per all-to-all copy it sent,
        one (the sum, by a reduce) per broadcast row."""
        return sum(self.send_counts) + self.bcast_index.numel()

    @property
    def device(self) -> torch.device:
        return self.send_index.device

    def to(self, device) -> "Route":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, v in values.items():
            if isinstance(v, torch.Tensor):
                values[name] = v.to(device)
        return Route(**values)

    @staticmethod
    def local(num_in: int, num_out: int, keep_index: torch.Tensor, keep_pos: torch.Tensor,
              rank: int = 0, world_size: int = 1, global_ranks=(0,)) -> "Route":
        """A route that only copies rows locally."""
        empty = torch.empty(0, dtype=torch.int64)
        zeros = (0,) * world_size
        return Route(rank, world_size, tuple(global_ranks), num_in, num_out, keep_index, keep_pos,
                     empty, zeros, zeros, empty, zeros, empty, empty, False)


def route_forward(x: torch.Tensor, route: Route, group, what: str = "exchange") -> torch.Tensor:
    """``x`` ``[route.num_in, ...]`` -> the buffer ``[route.num_out, ...]`` (a collective when
    the route is active; buffer rows nothing lands on are zero). Not differentiable by itself:
    :func:`route_backward` is its adjoint."""
    tail = tuple(x.shape[1:])
    out = x.new_zeros((route.num_out,) + tail)
    if route.keep_index.numel():
        out[route.keep_pos] = x[route.keep_index]
    if not route.active:
        return out
    send = x[route.send_index].contiguous()
    recv = x.new_empty((sum(route.recv_counts),) + tail)
    with collective(f"{what}: all_to_all_single", group):
        dist.all_to_all_single(recv, send, list(route.recv_counts), list(route.send_counts), group=group)
    out[route.recv_pos] = recv
    for src, count, pos in _broadcasts(route):
        with collective(f"{what}: broadcast from rank {route.global_ranks[src]}", group):
            if pos is None:
                dist.broadcast(x[route.bcast_index].contiguous(), src=route.global_ranks[src], group=group)
            else:
                buf = x.new_empty((count,) + tail)
                dist.broadcast(buf, src=route.global_ranks[src], group=group)
                out[pos] = buf
    return out


def route_backward(grad_out: torch.Tensor, route: Route, group, what: str = "exchange") -> torch.Tensor:
    """The adjoint of :func:`route_forward`: buffer gradients ``[num_out, ...]`` -> source
    gradients ``[num_in, ...]`` (every copy's gradient summed on the row's source rank)."""
    grad_out = grad_out.contiguous()
    tail = tuple(grad_out.shape[1:])
    grad = grad_out.new_zeros((route.num_in,) + tail)
    if route.keep_index.numel():
        grad.index_add_(0, route.keep_index, grad_out[route.keep_pos])
    if not route.active:
        return grad
    back = grad_out[route.recv_pos].contiguous()
    got = grad_out.new_empty((route.send_index.numel(),) + tail)
    with collective(f"{what} (backward): all_to_all_single", group):
        dist.all_to_all_single(got, back, list(route.send_counts), list(route.recv_counts), group=group)
    grad.index_add_(0, route.send_index, got)
    for src, count, pos in _broadcasts(route):
        with collective(f"{what} (backward): reduce to rank {route.global_ranks[src]}", group):
            if pos is None:
                buf = grad_out.new_zeros((count,) + tail)
                dist.reduce(buf, dst=route.global_ranks[src], op=dist.ReduceOp.SUM, group=group)
                grad.index_add_(0, route.bcast_index, buf)
            else:
                dist.reduce(grad_out[pos].contiguous(), dst=route.global_ranks[src], op=dist.ReduceOp.SUM, group=group)
    return grad


def _broadcasts(route: Route):
    """``(src, count, pos)`` for each rank that broadcasts ``count`` rows, in rank order (every
    rank walks them alike): ``pos`` the buffer positions its rows land on here, None on ``src``
    itself (its rows are ``route.bcast_index``)."""
    lo = 0
    for src, count in enumerate(route.bcast_counts):
        if not count:
            continue
        if src == route.rank:
            yield src, count, None
        else:
            yield src, count, route.bcast_pos[lo:lo + count]
            lo += count


def plan_broadcasts(send_rows: torch.Tensor, dest: torch.Tensor, ids_of, rank: int, world: int,
                    granks: tuple, group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list]:
    """Take the rows sent to every other rank out of an all-to-all and broadcast them instead
    (a collective at planning: every rank calls it).

    Args:
        send_rows: ``[S]`` source rows of the all-to-all, grouped by destination ``dest``.
        ids_of: maps source rows to the global ids the receivers place them by.

    Returns ``(send_rows, dest, bcast_index, bcast_counts, received)``: the all-to-all without
    the broadcast rows, this rank's broadcast rows, every rank's broadcast count and the ids of
    the rows broadcast by each other rank (a list by source rank, ``None`` for this rank and
    ranks that broadcast nothing).
    """
    empty = torch.empty(0, dtype=torch.int64)
    bcast_index = empty
    if world >= 3 and send_rows.numel():
        # A row asked for by all W - 1 other ranks: one broadcast instead of W - 1 copies.
        uniq, copies = torch.unique(send_rows, return_counts=True)
        bcast_index = uniq[copies == world - 1]
    counts = all_gather_ints(bcast_index.numel(), world, group)
    received = [None] * world
    for src, count in enumerate(counts):
        if count:
            ids = broadcast_ints(ids_of(bcast_index) if src == rank else None, count, granks[src], group)
            if src != rank:
                received[src] = ids
    if bcast_index.numel():
        keep = ~torch.isin(send_rows, bcast_index)
        send_rows, dest = send_rows[keep], dest[keep]
    return send_rows, dest, bcast_index, counts, received
