"""Process-group helpers for planning: who this rank is, and small int collectives (counts and
ids), each run under :func:`graphattn.distributed.faults.collective` so a failing peer is named."""

from __future__ import annotations

import torch
import torch.distributed as dist

from graphattn.distributed.faults import collective

__all__ = ["group_info", "comm_device", "all_to_all_ints", "all_gather_ints", "all_gather_vectors",
           "broadcast_ints"]


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
                    group=None, what: str = "planning") -> torch.Tensor:
    """All-to-all of int64 ids (planning): chunk ``i`` of ``values`` goes to rank ``i``."""
    dev = comm_device(group)
    out = torch.empty(sum(recv_counts), dtype=torch.int64, device=dev)
    with collective(f"{what}: all_to_all_single", group):
        dist.all_to_all_single(out, values.to(dev, torch.int64).contiguous(), recv_counts, send_counts,
                               group=group)
    return out.to(values.device)


def all_gather_vectors(values, world: int, group=None, what: str = "planning") -> torch.Tensor:
    """Every rank's int64 vector ``values`` (same length on every rank): ``[world, len]``."""
    dev = comm_device(group)
    mine = torch.as_tensor(values, dtype=torch.int64).to(dev).reshape(-1)
    out = [torch.zeros_like(mine) for _ in range(world)]
    with collective(f"{what}: all_gather", group):
        dist.all_gather(out, mine, group=group)
    return torch.stack(out).cpu()


def all_gather_ints(value: int, world: int, group=None, what: str = "planning") -> list[int]:
    """Every rank's ``value`` (planning)."""
    return all_gather_vectors([int(value)], world, group, what)[:, 0].tolist()


def broadcast_ints(values: torch.Tensor | None, count: int, src_global: int, group=None,
                   device=None, what: str = "planning") -> torch.Tensor:
    """Broadcast ``count`` int64 ids from global rank ``src_global`` (``values`` on the source)."""
    dev = comm_device(group)
    buf = (values.to(dev, torch.int64).contiguous() if values is not None
           else torch.empty(count, dtype=torch.int64, device=dev))
    with collective(f"{what}: broadcast from rank {src_global}", group):
        dist.broadcast(buf, src=src_global, group=group)
    return buf.to(device if device is not None else "cpu")
