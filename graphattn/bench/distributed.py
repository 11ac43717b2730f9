"""Sequence-parallel planning and a measured gloo run: ``python -m graphattn.bench distributed``.

**Plan** (no collectives run): :func:`graphattn.distributed.plan_traffic` makes, for every
rank of every world size, the decisions :func:`graphattn.distributed.shard_plan` makes, from
one pass over the pattern's rows (built a chunk at a time through the rules' ``queries=`` hook,
so 1,024 ranks of a 2^20-token sequence fit one machine), and counts what each rank receives
per step. Two plans per pattern and world size: **keys** (every remote key moves to its
queries: the halo exchange alone, the plan before queries could move) and **plan** (rows that
name many keys of a rank move there instead: :func:`graphattn.distributed.move_thresholds`). Bytes for
``H`` heads of ``D`` fp32 values (keys and values ``2D``, queries ``D``, partial results
``D + 1`` a row; a row moved to every rank gets its parts as one sum, by a reduce, and every
rank one maximum a head for it), no edge bias; every collective counts one copy of its result
per rank it reaches. The forward's bytes are compared with the rank's own q/k/v
bytes (``3 D`` a row); the backward brings back the gradients of what the rank sent.

**Measured**: ``world`` gloo processes on this machine run the sharded attention forward and
backward (one torch thread each) next to the single-process engine on the whole sequence, for a
band and for Longformer with global tokens (keys only vs the plan).
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

__all__ = ["PATTERNS", "traffic", "plan_table", "measure_gloo", "measured_table"]

PATTERNS = {
    "band r=128": lambda n: functools.partial(rules.band, n, radius=128),
    "bigbird b=64": lambda n: functools.partial(rules.bigbird, n, seed=0),
    "bigbird_etc b=64 +2 global": lambda n: functools.partial(rules.bigbird_etc, n, num_global=2, seed=0),
    "longformer r=128 +2 global": lambda n: functools.partial(rules.longformer, n, radius=128, global_indices=[0, 1]),
    "etc r=128 +16 global": lambda n: functools.partial(rules.etc, n, radius=128, num_global=16),
    "bp_transformer k=4": lambda n: functools.partial(rules.bp_transformer, n, k=4),
    "star": lambda n: functools.partial(rules.star_transformer, n),
    "random r=32": lambda n: functools.partial(rules.random, n, num_random_keys=32, seed=0),
}


def traffic(pattern: str, n: int, worlds, *, H: int = 4, D: int = 64, chunk: int = 1 << 14) -> list[dict]:
    """Per world size and plan (keys / plan), per-rank bytes received per step."""
    from graphattn.distributed.partition import NEVER
    from graphattn.distributed.traffic import traffic_of_plans

    rule = PATTERNS[pattern](n)
    num_nodes = rule(queries=range(0, 0)).num_nodes  # an empty build still knows its node count
    out = []
    both = traffic_of_plans(rule, num_nodes, worlds, chunk=chunk, plans=(False, True))
    for move, stats in zip((False, True), both):
        for W in sorted(stats):
            s = stats[W]
            unit = H * 4  # bytes per value per row, all heads, fp32
            fwd = (s["kv"] * 2 * D + s["queries"] * D + s["partials"] * (D + 1) + s["maxima"]) * unit
            bwd = (s["kv_back"] * 2 * D + s["partials"] * D + s["queries"] * (D + 1)) * unit
            qkv = s["local"] * 3 * D * unit
            ratio = torch.where(qkv > 0, fwd / qkv.clamp(min=1), torch.zeros(W, dtype=torch.float64))
            out.append({"pattern": pattern, "n": n, "nodes": num_nodes, "world": W,
                        "plan": "plan" if move else "keys", "local": int(s["local"].max()),
                        "moving": int((s["thresholds"] < NEVER).any(1).sum()), "kv_max": int(s["kv"].max()),
                        "queries_max": int(s["queries"].max()), "partials_max": int(s["partials"].max()),
                        "fwd_mean": float(fwd.double().mean()), "fwd_max": float(fwd.max()),
                        "step_max": float((fwd + bwd).max()), "ratio_median": float(ratio.median()),
                        "ratio_max": float(ratio.max())})
    return out


def plan_table(ns, worlds, patterns, *, H: int = 4, D: int = 64) -> str:
    """Markdown table of :func:`traffic` for every pattern and ``n``."""
    rows = []
    mib = lambda b: f"{b / 2**20:,.2f}"  # noqa: E731
    for pattern in patterns:
        for n in ns:
            for s in traffic(pattern, n, worlds, H=H, D=D):
                rows.append([s["pattern"], f"{n:,}", f"{s['nodes']:,}", s["world"], s["plan"], f"{s['local']:,}",
                             s["moving"], f"{s['kv_max']:,}", f"{s['queries_max']:,}", f"{s['partials_max']:,}",
                             mib(s["fwd_mean"]), mib(s["fwd_max"]),
                             f"{s['fwd_max'] / s['fwd_mean']:.3f}" if s["fwd_mean"] else "-",
                             f"{s['ratio_median']:.3g}", f"{s['ratio_max']:.3g}", mib(s["step_max"])])
    return format_table(["pattern", "n", "nodes", "ranks W", "plan", "local rows", "ranks moving queries",
                         "kv rows recv max", "query rows recv max", "partials recv max", "fwd MiB mean",
                         "fwd MiB max", "max/mean", "fwd/local qkv median", "fwd/local qkv max",
                         "fwd+bwd MiB max"], rows)


# ---------------------------------------------------------------- measured gloo run

MEASURED = {
    "band r=128": lambda n: functools.partial(rules.band, n, radius=128),
    "longformer r=128 +2 global": lambda n: functools.partial(rules.longformer, n, radius=128,
                                                              global_indices=[0, 1]),
}


def _measure_worker(rank: int, world: int, pattern: str, n: int, move: bool, H: int, D: int, repeats: int,
                    out_dir: str) -> None:
    import torch.distributed as dist

    from graphattn import distributed as gd

    rule = MEASURED[pattern](n)
    t0 = time.perf_counter()
    plan = gd.shard_plan(rule, num_nodes=n, move_queries=move)
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

    step_s, step_cpu = timed(step)
    fwd, bwd = plan.received_bytes(H, D)
    t = torch.tensor([step_s, step_cpu, plan_s, fwd + bwd], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"step": float(t[0]), "step_cpu": float(t[1]), "plan": float(t[2]),
                       "bytes_max": float(t[3])}, f)


def measure_gloo(world: int, *, pattern: str = "band r=128", n: int = 65536, move_queries: bool = True,
                 H: int = 4, D: int = 64, repeats: int = 3) -> dict:
    """Median forward+backward seconds of the sharded attention on ``world`` gloo ranks (the
    slowest rank; one torch thread per rank), and the most bytes a rank received per step."""
    from graphattn.distributed import spawn

    with tempfile.TemporaryDirectory(prefix="graphattn-bench-") as tmp:
        spawn(_measure_worker, world, pattern, n, move_queries, H, D, repeats, tmp, timeout_s=600)
        with open(os.path.join(tmp, "result.json")) as f:
            return json.load(f)


def measure_single(*, pattern: str = "band r=128", n: int = 65536, H: int = 4, D: int = 64, repeats: int = 3,
                   threads: int | None = None) -> tuple[float, float]:
    """Median (wall, CPU) seconds of a forward+backward of the single-process engine on the
    whole sequence."""
    from graphattn.nn import graph_attention

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = MEASURED[pattern](n)()
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


def measured_table(worlds=(2, 4), *, n: int = 65536, H: int = 4, D: int = 64, repeats: int = 3,
                   patterns=tuple(MEASURED)) -> str:
    """Wall and CPU seconds of forward+backward: single process (1 thread) vs ``world`` gloo
    ranks of one thread each (slowest rank), keys only and the plan. Speed-up is the
    single-process wall time over the sharded wall time; the CPU column shows how the work
    splits whatever else loads the machine."""
    rows = []
    for pattern in patterns:
        wall1, cpu1 = measure_single(pattern=pattern, n=n, H=H, D=D, repeats=repeats, threads=1)
        rows.append([pattern, "single process, 1 thread", "-", "-", f"{wall1:.3f}", f"{cpu1:.3f}", "-", "1.00"])
        for world in worlds:
            # A band moves no queries: its two plans are the same plan.
            for move in ((True,) if pattern.startswith("band") else (False, True)):
                r = measure_gloo(world, pattern=pattern, n=n, move_queries=move, H=H, D=D, repeats=repeats)
                rows.append([pattern, f"gloo, {world} ranks x 1 thread", "plan" if move else "keys",
                             f"{r['bytes_max'] / 2**20:,.2f}", f"{r['step']:.3f}", f"{r['step_cpu']:.3f}",
                             f"{r['plan']:.3f}", f"{wall1 / r['step']:.2f}"])
    return format_table(["pattern", "run", "plan", "fwd+bwd MiB max", "fwd+bwd wall s", "fwd+bwd CPU s",
                         "plan s", "speed-up (wall)"], rows)
