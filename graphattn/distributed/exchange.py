"""Halo exchange on torch.distributed, differentiable.

Every transfer is a torch.distributed collective, so the same code runs on gloo (CPU
tensors) and NCCL (CUDA tensors):

- forward: one ``all_to_all_single`` carries, to each rank, exactly the rows it asked for at
  planning time (its halo along the cut edges); rows that *every* other rank asked for (global
  nodes and tokens) leave their owner once, by one ``broadcast`` per owning rank, instead of as
  ``world_size - 1`` copies inside the all-to-all;
- backward: the same plan reversed: an ``all_to_all_single`` returns the gradient rows to their
  owners, which ``index_add`` them into their local gradient, and a ``reduce`` sums the
  gradients of the broadcast rows on their owner.

Every rank calls the same collectives in the same order (the all-to-all, then one broadcast per
source rank in rank order), also ranks that send or receive nothing, which is what keeps the
collectives matched. As with any collective autograd (DistributedDataParallel's gradient
all-reduce, for one), every rank must run the backward of every exchange it ran forward, and
the exchanges' backward order must be the same on every rank: stacked layers are ordered by
their data dependencies, and :class:`~graphattn.distributed.GraphAttention` folds a batch into
one exchange; independent exchanges in one autograd graph run in autograd's order (reverse
creation), which is the same on every rank running the same program.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["group_info", "exchange_rows", "HaloExchange"]


def group_info(group=None) -> tuple[int, int, tuple[int, ...]]:
    """``(rank, world_size, global ranks)`` of this process in ``group``.

    ``group=None`` means the default group; when torch.distributed is not initialised at all,
    the process is rank 0 of a world of 1 (the single-process case: no communication).
    """
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, (0,)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("expected torch.distributed to be initialised (dist.init_process_group) "
                         f"when a group is given, got group={group!r} and no process group")
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    if rank < 0:
        raise ValueError("expected this process to be a member of group, got a group without it")
    if group is None or group is dist.group.WORLD:
        ranks = tuple(range(world))
    else:
        ranks = tuple(dist.get_global_rank(group, r) for r in range(world))
    return rank, world, ranks


def comm_device(group=None) -> torch.device:
    """Where the planning buffers (counts, ids) must live for the group's backend."""
    backend = str(dist.get_backend(group))
    # NCCL only moves CUDA tensors; a mixed "cpu:gloo,cuda:nccl" group takes CPU tensors too.
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_to_all_ints(values: torch.Tensor, send_counts: list[int], recv_counts: list[int],
                    group=None) -> torch.Tensor:
    """All-to-all of int64 ids (planning): rank r's chunk ``i`` goes to rank ``i``."""
    dev = comm_device(group)
    out = torch.empty(sum(recv_counts), dtype=torch.int64, device=dev)
    dist.all_to_all_single(out, values.to(dev, torch.int64).contiguous(), recv_counts, send_counts,
                           group=group)
    return out.to(values.device)


def all_gather_ints(value: int, world: int, group=None) -> list[int]:
    """Every rank's ``value`` (planning)."""
    dev = comm_device(group)
    out = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(out, torch.tensor([int(value)], dtype=torch.int64, device=dev), group=group)
    return [int(t) for t in out]


def broadcast_ints(values: torch.Tensor | None, count: int, src_global: int, group=None,
                   device=None) -> torch.Tensor:
    """Broadcast ``count`` int64 ids from global rank ``src_global`` (``values`` on the source)."""
    dev = comm_device(group)
    buf = (values.to(dev, torch.int64).contiguous() if values is not None
           else torch.empty(count, dtype=torch.int64, device=dev))
    dist.broadcast(buf, src=src_global, group=group)
    return buf.to(device if device is not None else "cpu")


def _forward(x: torch.Tensor, plan, group) -> torch.Tensor:
    ext = x.new_empty((plan.num_extended,) + tuple(x.shape[1:]))
    ext[plan.offset:plan.offset + plan.num_local] = x
    if plan.world_size == 1:
        return ext
    send = x[plan.send_index].contiguous()
    recv = x.new_empty((plan.num_recv_all_to_all,) + tuple(x.shape[1:]))
    dist.all_to_all_single(recv, send, list(plan.recv_counts), list(plan.send_counts), group=group)
    ext[plan.recv_pos] = recv
    lo = 0
    for src, count in enumerate(plan.bcast_counts):
        if not count:
            continue
        if src == plan.rank:
            dist.broadcast(x[plan.bcast_index].contiguous(), src=plan.global_ranks[src], group=group)
        else:
            buf = x.new_empty((count,) + tuple(x.shape[1:]))
            dist.broadcast(buf, src=plan.global_ranks[src], group=group)
            ext[plan.bcast_pos[lo:lo + count]] = buf
            lo += count
    return ext


def _backward(grad_ext: torch.Tensor, plan, group) -> torch.Tensor:
    grad = grad_ext[plan.offset:plan.offset + plan.num_local].clone()
    if plan.world_size == 1:
        return grad
    back = grad_ext[plan.recv_pos].contiguous()
    got = grad_ext.new_empty((plan.send_index.numel(),) + tuple(grad_ext.shape[1:]))
    dist.all_to_all_single(got, back, list(plan.send_counts), list(plan.recv_counts), group=group)
    grad.index_add_(0, plan.send_index, got)
    lo = 0
    for src, count in enumerate(plan.bcast_counts):
        if not count:
            continue
        if src == plan.rank:
            # The owner's own contribution to its broadcast rows already sits in `grad`.
            buf = grad_ext.new_zeros((count,) + tuple(grad_ext.shape[1:]))
            dist.reduce(buf, dst=plan.global_ranks[src], op=dist.ReduceOp.SUM, group=group)
            grad.index_add_(0, plan.bcast_index, buf)
        else:
            buf = grad_ext[plan.bcast_pos[lo:lo + count]].contiguous()
            dist.reduce(buf, dst=plan.global_ranks[src], op=dist.ReduceOp.SUM, group=group)
            lo += count
    return grad


class HaloExchange(torch.autograd.Function):
    """``[num_local, ...]`` rows of this rank -> ``[num_extended, ...]`` rows: the local rows and
    every remote row the shard's queries need, in increasing global id (see :class:`ShardPlan`).
    Backward sends the gradients of the remote rows back to their owners."""

    @staticmethod
    def forward(ctx, x, plan, group):
        ctx.plan, ctx.group = plan, group
        return _forward(x, plan, group)

    @staticmethod
    def backward(ctx, grad_ext):
        return _backward(grad_ext.contiguous(), ctx.plan, ctx.group), None, None


def exchange_rows(x: torch.Tensor, plan, group=None) -> torch.Tensor:
    """Differentiable halo exchange of ``x`` ``[plan.num_local, ...]`` (a collective: every rank
    of the plan's group calls it). Returns ``[plan.num_extended, ...]``: row ``p`` holds node
    ``plan.extended_ids[p]``; the local rows are ``[plan.offset, plan.offset + plan.num_local)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != plan.num_local:
        raise ValueError(f"expected x with {plan.num_local} rows (this rank's shard), got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.device != plan.send_index.device:
        raise ValueError(f"expected x on the plan's device {plan.send_index.device}, got {x.device} "
                         "(use plan.to(device))")
    return HaloExchange.apply(x, plan, group)
