"""Attention benchmark: ``python -m graphattn.bench attention``.

graphattn's engine against the standard peers on the same inputs (fp32, ``H`` heads of ``D``):
dense SDPA over all pairs with the graph as mask, a plain-torch blocked sliding window, HF's
Longformer self-attention, PyG-style gather/scatter message passing, torch.sparse CSR, compiled
FlexAttention (forward only: it has no CPU backward), and HF's BigBird block-sparse attention.
Every cell runs in its own process, so peak RSS is that cell's own (``ru_maxrss``).

``--floor``: the machine's fp32 matmul rate, measured in the same run (a 2048 x 2048 GEMM in its
own process, same threads), and for every graphattn cell the ratio of its time to its FLOP floor:
the FLOPs of the graph's edges (``4 E H D`` forward, 3.5 times that forward+backward, as flash
attention counts, recomputation included) at that rate. ``--large`` adds n = 2^20 for graphattn
(the peers cannot run there: dense is n^2, gather/scatter holds ``[E, H, D]``) and the ratio of
its time to 16 times its time at 65,536 tokens (``x linear``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

from graphattn.bench import peers
from graphattn.bench._timing import describe_cell, format_table, matmul_rate, measure, spawn_worker
from graphattn.bench.cases import BLOCK, PATTERNS, RADIUS, RANDOM_KEYS, keys_per_query, pattern_graph

__all__ = ["run", "run_cell", "edge_flops", "glibc_settings", "PATTERNS", "METHODS", "LARGE_N"]

METHODS = ("graphattn",) + peers.names("cpu")
LARGE_N = 1 << 20
_GIB = 1 << 30


def edge_flops(pattern_edges: int, H: int, D: int, mode: str) -> float:
    """FLOPs of a graph's edges: ``4 E H D`` forward (scores and values), 3.5x forward+backward."""
    return 4.0 * pattern_edges * H * D * (3.5 if mode == "fwd+bwd" else 1.0)


def glibc_settings() -> str:
    """The malloc tunables of this environment (they move large-tensor timings)."""
    keys = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return ", ".join(set_) if set_ else "glibc malloc defaults (buffers over 32 MB go back to the OS when freed)"


def applicable(method: str, pattern: str, n: int, H: int, D: int) -> str | None:
    """None if the cell runs, else why it is skipped."""
    edges = n * keys_per_query(pattern)
    if method != "graphattn":
        runs_on = peers.get(method).patterns["cpu"]
        if pattern not in runs_on:
            return f"{', '.join(runs_on)} only"
    if n >= LARGE_N and method != "graphattn":
        return f"n = {n:,}: graphattn only"
    if method == "dense_sdpa" and n > 16384:
        return "n^2 (21 s forward at 65,536)"
    if method == "gather_scatter" and edges * H * D * 4 * 7 > 12 * _GIB:
        return f"needs ~{edges * H * D * 4 * 7 / _GIB:.0f} GB"
    return None


def _inputs(n, H, D, requires_grad):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, H, D, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


def run_cell(method: str, pattern: str, n: int, H: int, D: int, mode: str, repeats: int) -> dict:
    """Time one (method, pattern, n, mode) in this process; returns a JSON-able dict."""
    from graphattn.nn import graph_attention
    from graphattn.nn.plan import get_plan

    if method == "matmul":
        return {"rate": matmul_rate()}
    backward = mode == "fwd+bwd"
    q, k, v = _inputs(n, H, D, backward)
    info: dict = {}
    import torch_geometric  # noqa: F401  (its import, seconds in a fresh process, is not one-time work of a cell)

    g = pattern_graph(pattern, n)
    t0 = time.perf_counter()
    if method == "graphattn":
        get_plan(g, n, n, tile=64, dense_threshold=0.25)
        info["setup_s"] = time.perf_counter() - t0
        info["edges"] = g.num_edges
        fn = lambda: graph_attention(q, k, v, g)  # noqa: E731
    else:
        peer = peers.get(method)
        if backward and "cpu" not in peer.backward:
            return {"skip": "no CPU backward"}
        try:
            f = peer.build(g, pattern, n, H, D, "cpu")
        except ImportError as exc:
            return {"skip": f"{exc.name or 'a dependency'} not installed"}
        with torch.no_grad():
            f(q, k, v)  # one-time work (masks, BlockMask, compile) counted as setup
        info["setup_s"] = time.perf_counter() - t0
        fn = lambda: f(q, k, v)  # noqa: E731

    if backward:
        def step():
            out = fn()
            out.backward(torch.ones_like(out))
            return None
    else:
        def step():
            with torch.no_grad():
                fn()
            return None
    m = measure(step, repeats=repeats, warmup=1)
    info.update(time_s=m.median_s, peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20))
    return info


def _spawn(method, pattern, n, H, D, mode, repeats, timeout) -> dict:
    return spawn_worker("graphattn.bench.attention",
                        dict(method=method, pattern=pattern, n=n, H=H, D=D, mode=mode, repeats=repeats), timeout)


def run(ns=(4096, 16384, 65536), patterns=PATTERNS, methods=METHODS, H=4, D=64, repeats=3,
        timeout=600, log=print, floor: bool = False, large: bool = False) -> str:
    rows = []
    results = {}
    rate = None
    if floor:
        rate = spawn_worker("graphattn.bench.attention", dict(method="matmul", pattern="", n=0, H=0, D=0, mode="",
                                                             repeats=0), timeout).get("rate")
        log(f"  matmul rate {rate / 1e9:.1f} GFLOP/s" if rate else "  matmul rate: not measured")
    if large and LARGE_N not in ns:
        ns = tuple(ns) + (LARGE_N,)
    for pattern in patterns:
        for n in ns:
            for method in methods:
                why = applicable(method, pattern, n, H, D)
                if why and why.endswith("only"):
                    continue
                for mode in ("fwd", "fwd+bwd"):
                    r = {"skip": why} if why else _spawn(method, pattern, n, H, D, mode, repeats, timeout)
                    results[(pattern, n, method, mode)] = r
                    log(f"  {pattern:8s} n={n:<6d} {method:15s} {mode:8s} {describe_cell(r)}")
    extra = (["x floor"] if rate else []) + (["x linear"] if large else [])
    for (pattern, n, method, mode), r in results.items():
        mine = results.get((pattern, n, "graphattn", mode), {})
        if "skip" in r:
            rows.append([pattern, f"{n:,}", method, mode, "-", "-", "-", r["skip"]] + [""] * len(extra))
            continue
        ratio = (f"{r['time_s'] / mine['time_s']:.1f}x" if "time_s" in mine and method != "graphattn" else "")
        setup = f"{r['setup_s']:.2f}" if "setup_s" in r else ""
        row = [pattern, f"{n:,}", method, mode, f"{r['time_s']:.3f}", f"{r['peak_rss_gib']:.2f}", setup, ratio]
        if rate:
            row.append(f"{r['time_s'] / (edge_flops(r['edges'], H, D, mode) / rate):.2f}" if "edges" in r else "")
        if large:
            base = results.get((pattern, 65536, method, mode), {})
            row.append(f"{r['time_s'] / (16 * base['time_s']):.2f}" if n == LARGE_N and "time_s" in base else "")
        rows.append(row)
    head = (f"matmul rate {rate / 1e9:.1f} GFLOP/s (fp32 GEMM 2048, same run); " if rate else "") + glibc_settings()
    return head + "\n" + format_table(["pattern", "n", "method", "mode", "time s", "peak RSS GiB", "one-time s",
                                       "peer / graphattn"] + extra, rows)


if __name__ == "__main__" and "--worker" in sys.argv:
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    torch.manual_seed(0)
    print(json.dumps(run_cell(**spec)))
