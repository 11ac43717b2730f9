"""Sharded attention under ``torchrun``, checked against a single process.

On CPU processes (gloo)::

    torchrun --nproc-per-node 4 -m graphattn.distributed.demo --pattern bigbird --tokens 20000

On one node with 4 GPUs (NCCL; each rank uses ``cuda:LOCAL_RANK``)::

    torchrun --nproc-per-node 4 -m graphattn.distributed.demo --backend nccl --tokens 1000000 --no-check

Each rank builds only its query rows (the rule's ``queries=`` hook), runs a forward and
backward of :func:`graphattn.distributed.graph_attention` and reports its plan and time; with
``--check`` (small ``n`` only: rank 0 holds everything) rank 0 compares outputs and gradients with
the single-process engine on the whole graph.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch
import torch.distributed as dist

from graphattn import rules
from graphattn.distributed.attention import graph_attention
from graphattn.distributed.partition import local_range
from graphattn.distributed.plan import shard_plan

__all__ = ["main"]

_RULES = {
    "band": lambda n: functools.partial(rules.band, n, radius=64),
    "bigbird": lambda n: functools.partial(rules.bigbird, n, seed=0),
    "longformer": lambda n: functools.partial(rules.longformer, n, radius=64, global_indices=[0]),
    "bp_transformer": lambda n: functools.partial(rules.bp_transformer, n, k=4),
    "random": lambda n: functools.partial(rules.random, n, num_random_keys=16, seed=0),
}


def _gather_rows(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' row shards, concatenated (padded all_gather: collectives want equal sizes)."""
    pad = max(sizes)
    buf = torch.zeros((pad,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    buf[:t.shape[0]] = t
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphattn.distributed.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    p.add_argument("--pattern", default="band", choices=sorted(_RULES))
    p.add_argument("--tokens", type=int, default=8192, help="sequence length n")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    dist.init_process_group(args.backend)  # env:// rendezvous from torchrun
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cpu")
        if args.backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        rule = _RULES[args.pattern](args.tokens)
        num_nodes = rule(queries=range(0, 0)).num_nodes
        t0 = time.perf_counter()
        plan = shard_plan(rule, num_nodes=num_nodes, device=device)
        plan_s = time.perf_counter() - t0
        span = local_range(num_nodes, rank, world)
        H, D = args.heads, args.head_dim
        gen = torch.Generator().manual_seed(0 if args.check else 1 + rank)
        rows = num_nodes if args.check else len(span)  # --check: every rank draws the full tensors
        full = [torch.randn(rows, H, D, generator=gen) for _ in range(3)]
        q, k, v = (t[span.start:span.stop] if args.check else t for t in full)
        q, k, v = (t.to(device).requires_grad_() for t in (q, k, v))
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        out = graph_attention(q, k, v, plan)
        out.square().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - t0
        print(f"rank {rank}/{world}: {plan!r}; plan {plan_s:.3f} s, forward+backward {step_s:.3f} s",
              flush=True)
        if args.check:
            sizes = [len(local_range(num_nodes, r, world)) for r in range(world)]
            got = [_gather_rows(t, sizes) for t in (out.detach(), q.grad, k.grad, v.grad)]
            if rank == 0:
                from graphattn.nn import graph_attention as local_attention

                g = rule().to(device)
                fq, fk, fv = (t.to(device).requires_grad_() for t in full)
                ref = local_attention(fq, fk, fv, g)
                ref.square().sum().backward()
                err = max(float((a - b).abs().max()) for a, b in zip(got, (ref.detach(), fq.grad, fk.grad, fv.grad)))
                print(f"max |sharded - single process| over out, dq, dk, dv: {err:.2e}", flush=True)
                if err > 1e-3:
                    return 1
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
