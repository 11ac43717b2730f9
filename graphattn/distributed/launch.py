"""Run a function on several local processes with a gloo process group (CPU testing helper).

On GPUs, launch with ``torchrun`` and NCCL instead (see the README); the attention code is the
same.
"""

from __future__ import annotations

import datetime
import os
import tempfile

import torch.distributed as dist
import torch.multiprocessing as mp

from graphattn._validate import check_int

__all__ = ["spawn"]


def _entry(rank: int, fn, world_size: int, init_file: str, timeout_s: float, threads: int | None, args):
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world_size: int, *args, timeout_s: float = 120.0, threads: int | None = 1) -> None:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes of one gloo group.

    ``fn`` must be importable by name (a module-level function: processes are spawned, not
    forked). Collectives that wait longer than ``timeout_s`` fail instead of hanging; an
    exception in any process is raised here. ``threads``: torch threads per process (default 1,
    so that ``world_size`` processes share the cores instead of oversubscribing them; ``None``
    keeps torch's default).
    """
    world_size = check_int("world_size", world_size, minimum=1)
    if threads is not None:
        threads = check_int("threads", threads, minimum=1)
    with tempfile.TemporaryDirectory(prefix="graphattn-dist-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        mp.spawn(_entry, args=(fn, world_size, init_file, float(timeout_s), threads, args),
                 nprocs=world_size, join=True)
