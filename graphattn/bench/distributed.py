"""Sequence-parallel planning and a measured gloo run: ``python -m graphattn.bench distributed``.

**Plan** (no collectives run): for each pattern and world size, every simulated rank builds only
its own query rows (the rules' ``queries=`` hook, in chunks, so 1,024 ranks of a 2^20-token
sequence fit one machine) and counts the remote key rows it needs
(:func:`graphattn.distributed.halo_sizes`). Reported per rank: rows received (median and max
over the simulated ranks), the ratio of received to local rows, and the bytes of one forward
exchange, ``rows * H * (D + Dv) * 4`` (keys and values in fp32; the backward sends the same
amount of gradients back). Up to ``max_ranks`` ranks are simulated per world size: the first,
the last and evenly spaced ones between (all of them when the world is that small).

**Measured**: ``world`` gloo processes on this machine run the sharded attention forward and
backward (one torch thread each) next to the single-process engine on the whole sequence.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
import time

import torch

from graphattn import rules
from graphattn.bench._timing import format_table

__all__ = ["PATTERNS", "simulate", "plan_table", "measure_gloo", "measured_table"]

PATTERNS = {
    "band r=128": lambda n: functools.partial(rules.band, n, radius=128),
    "bigbird b=64": lambda n: functools.partial(rules.bigbird, n, seed=0),
    "longformer r=128 +2 global": lambda n: functools.partial(rules.longformer, n, radius=128, global_indices=[0, 1]),
    "bp_transformer k=4": lambda n: functools.partial(rules.bp_transformer, n, k=4),
    "random r=32": lambda n: functools.partial(rules.random, n, num_random_keys=32, seed=0),
}


def _sampled_ranks(world: int, max_ranks: int) -> list[int]:
    if world <= max_ranks:
        return list(range(world))
    return sorted({round(i * (world - 1) / (max_ranks - 1)) for i in range(max_ranks)})


def simulate(pattern: str, n: int, world: int, *, max_ranks: int = 16, chunk: int = 1 << 14) -> dict:
    """Halo statistics of one pattern at ``n`` tokens over ``world`` simulated ranks."""
    from graphattn.distributed import halo_sizes, local_range

    rule = PATTERNS[pattern](n)
    num_nodes = rule(queries=range(0, 0)).num_nodes  # an empty build still knows its node count
    ranks = _sampled_ranks(world, max_ranks)
    recv = halo_sizes(rule, num_nodes, world, ranks, chunk=chunk).tolist()
    local = [len(local_range(num_nodes, r, world)) for r in ranks]
    ratio = [a / b for a, b in zip(recv, local) if b]
    return {"pattern": pattern, "n": n, "nodes": num_nodes, "world": world, "ranks": len(ranks),
            "local": max(local), "recv_median": statistics.median(recv), "recv_max": max(recv),
            "ratio_median": statistics.median(ratio) if ratio else 0.0, "ratio_max": max(ratio, default=0.0)}


def _mib(rows: float, H: int, D: int) -> str:
    return f"{rows * H * 2 * D * 4 / 2**20:,.2f}"


def plan_table(ns, worlds, patterns, *, H: int = 4, D: int = 64, max_ranks: int = 16) -> str:
    rows = []
    for pattern in patterns:
        for n in ns:
            for world in worlds:
                s = simulate(pattern, n, world, max_ranks=max_ranks)
                rows.append([pattern, f"{n:,}", f"{s['nodes']:,}", world, s["ranks"], f"{s['local']:,}",
                             f"{s['recv_median']:,.0f}", f"{s['recv_max']:,}",
                             f"{s['ratio_median']:.3g}", f"{s['ratio_max']:.3g}",
                             _mib(s["recv_median"], H, D), _mib(s["recv_max"], H, D)])
    return format_table(["pattern", "n", "nodes", "ranks W", "simulated", "local rows", "recv median",
                         "recv max", "recv/local median", "recv/local max", "MiB/step median",
                         "MiB/step max"], rows)


# ---------------------------------------------------------------- measured gloo run

def _measure_worker(rank: int, world: int, n: int, radius: int, H: int, D: int, repeats: int,
                    out_dir: str) -> None:
    import torch.distributed as dist

    from graphattn import distributed as gd

    rule = functools.partial(rules.band, n, radius=radius)
    t0 = time.perf_counter()
    plan = gd.shard_plan(rule, num_nodes=n)
    plan_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(rank)
    q, k, v = (torch.randn(plan.num_local, H, D, generator=gen, requires_grad=True) for _ in range(3))

    def timed(fn) -> tuple[float, float]:
        # Start every repeat together (barrier outside the timed region), time this rank, and
        # keep the medians of wall and CPU time (CPU time is robust to other load on the
        # machine); the step of a collective program is its slowest rank's.
        walls, cpus = [], []
        for i in range(repeats + 1):  # one warm-up
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        return statistics.median(walls), statistics.median(cpus)

    def step():
        gd.graph_attention(q, k, v, plan).sum().backward()

    def exchange():
        kv = torch.cat([k, v], -1).detach().requires_grad_()
        gd.exchange_rows(kv, plan).sum().backward()

    (step_s, step_cpu), (ex_s, ex_cpu) = timed(step), timed(exchange)
    t = torch.tensor([step_s, step_cpu, ex_s, ex_cpu, plan_s], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"step": float(t[0]), "step_cpu": float(t[1]), "exchange": float(t[2]),
                       "exchange_cpu": float(t[3]), "plan": float(t[4]),
                       "received": plan.num_received, "local": plan.num_local}, f)


def measure_gloo(world: int, *, n: int = 65536, radius: int = 128, H: int = 4, D: int = 64,
                 repeats: int = 3) -> dict:
    """Median forward+backward seconds of the sharded band attention on ``world`` gloo ranks
    (the slowest rank; one torch thread per rank)."""
    from graphattn.distributed import spawn

    with tempfile.TemporaryDirectory(prefix="graphattn-bench-") as tmp:
        spawn(_measure_worker, world, n, radius, H, D, repeats, tmp, timeout_s=600)
        with open(os.path.join(tmp, "result.json")) as f:
            return json.load(f)


def measure_single(*, n: int = 65536, radius: int = 128, H: int = 4, D: int = 64, repeats: int = 3,
                   threads: int | None = None) -> tuple[float, float]:
    """Median (wall, CPU) seconds of a forward+backward of the single-process engine on the
    whole sequence."""
    from graphattn.nn import graph_attention

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = rules.band(n, radius=radius)
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(n, H, D, generator=gen, requires_grad=True) for _ in range(3))
        walls, cpus = [], []
        for i in range(repeats + 1):  # one warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            graph_attention(q, k, v, g).sum().backward()
            if i:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        return statistics.median(walls), statistics.median(cpus)
    finally:
        torch.set_num_threads(old)


def measured_table(worlds=(2, 4), *, n: int = 65536, radius: int = 128, H: int = 4, D: int = 64,
                   repeats: int = 3) -> str:
    """Wall and CPU seconds of forward+backward: single process (1 thread) vs ``world`` gloo
    ranks of one thread each (slowest rank). Speed-up is the single-process wall time over the
    sharded wall time; the CPU column shows how the work splits whatever else loads the machine."""
    wall1, cpu1 = measure_single(n=n, radius=radius, H=H, D=D, repeats=repeats, threads=1)
    rows = [["single process, 1 thread", "-", f"{wall1:.3f}", f"{cpu1:.3f}", "-", "-", "-", "1.00"]]
    for world in worlds:
        r = measure_gloo(world, n=n, radius=radius, H=H, D=D, repeats=repeats)
        rows.append([f"gloo, {world} ranks x 1 thread", f"{r['received']:,}", f"{r['step']:.3f}",
                     f"{r['step_cpu']:.3f}", f"{r['exchange']:.4f}", f"{r['exchange_cpu']:.4f}",
                     f"{r['plan']:.3f}", f"{wall1 / r['step']:.2f}"])
    return format_table(["run", "rows received (rank 0)", "fwd+bwd wall s", "fwd+bwd CPU s",
                         "exchange wall s", "exchange CPU s", "plan s", "speed-up (wall)"], rows)
