"""Compile report of the fused kernels for a GPU, on any machine: ``python -m graphattn.bench gpu-compile``.

Runs the launches of the GPU benchmark (:mod:`graphattn.bench.gpu`: its exactness graphs in
fp32 and bf16 and its timed graphs in bf16 with 8 heads x 64, tiles 64 and 128) plus fp16,
dropout and an odd head dim, forward and backward, under
:func:`graphattn.nn.triton.aot.compile_only`: every kernel specialisation they launch is
compiled for the target (sm_90 by default: the H100/H200) and reported with its registers,
spills, shared memory, tensor-core use and whether a block fits the SM. Needs triton (with its
NVIDIA back end), not a GPU. Nothing is computed: the graphs are small stand-ins with the
same structure (dense tiles, sparse edges, split long rows) as the benchmark's.
"""

from __future__ import annotations

import time

import torch

from graphattn.bench._timing import format_table
from graphattn.nn.triton import aot as triton_aot

__all__ = ["cases", "compile_builds", "build_table", "run", "sweep", "sweep_table"]


def cases(n: int = 4096):
    """``(name, graph, nq, nk, heads, dim, dtype, bias, dropout_p, tile)`` of every launch
    configuration: the GPU benchmark's exactness graphs (fp32, bf16; 4 heads x 64), its timed
    patterns (bf16, 8 x 64, tiles 64 and 128), fp16 with dropout and head dim 24."""
    from graphattn import AttentionGraph, rules
    from graphattn.bench.cases import exact_cases, pattern_graph

    out = []
    for name, (build, with_bias, _flex) in exact_cases(n).items():
        built = build()
        graph, nq, nk = (built, n, n) if isinstance(built, AttentionGraph) else built
        for dtype in (torch.float32, torch.bfloat16):
            out.append((name, graph, nq, nk, 4, 64, dtype, with_bias, 0.0, 64))
    for pattern in ("band", "bigbird", "random"):
        for tile in ((64, 128) if pattern != "random" else (64,)):
            out.append((f"bench {pattern}", pattern_graph(pattern, n), n, n, 8, 64, torch.bfloat16, False, 0.0, tile))
    mixed = rules.band(n, radius=64) | rules.random(n, num_random_keys=8, seed=1)
    out.append(("band+random, dropout, head dim 24", mixed, n, n, 2, 24, torch.float16, True, 0.1, 32))
    return out


def _launch_all(plan, heads: int, dim: int, dtype, with_bias: bool, dropout_p: float = 0.0) -> None:
    """Forward and backward through the fused kernels on zero inputs (inside compile_only, this
    compiles every kernel the call launches)."""
    from graphattn.nn.triton import FusedGraphAttention

    q, k, v = (torch.zeros(n, heads, dim, dtype=dtype, requires_grad=True)
               for n in (plan.num_queries, plan.num_keys, plan.num_keys))
    bias = torch.zeros(plan.num_edges, heads, requires_grad=True) if with_bias else None
    out, _ = FusedGraphAttention.apply(q, k, v, bias, plan, dim ** -0.5, dropout_p, 7)
    out.backward(torch.zeros_like(out))


def compile_builds(target: triton_aot.Target = triton_aot.H100, n: int = 4096, log=None):
    """Compile every kernel the :func:`cases` launch; returns the ``KernelBuild`` list."""
    from graphattn.nn.plan import get_plan

    with triton_aot.compile_only(target) as builds:
        for name, graph, nq, nk, heads, dim, dtype, with_bias, p, tile in cases(n):
            t0, before = time.perf_counter(), len(builds)
            _launch_all(get_plan(graph, nq, nk, tile=tile, dense_threshold=0.25), heads, dim, dtype, with_bias, p)
            if log is not None:
                log(f"  {name} {str(dtype)[6:]} tile {tile}: {len(builds) - before} new kernels "
                    f"({time.perf_counter() - t0:.1f} s)")
    return builds


_FLAGS = ("HAS_BIAS", "WANT_DBIAS", "PER_HEAD", "DROPOUT", "FINAL", "PARTIAL", "INIT", "ADD", "KEYS_FIRST")


def build_table(builds) -> str:
    rows = []
    for b in builds:
        c = b.constants
        flags = [k.lower() for k, v in c.items() if k in _FLAGS and v]
        if c.get("WANT_DK") is False or c.get("WANT_DV") is False:  # one of two launches
            flags.append("dK only" if c["WANT_DK"] else "dV only")
        flags = ",".join(flags)
        block = c.get("BLOCK_T", c.get("BLOCK_N"))
        rows.append([b.kernel, c.get("dtype", "-"), block, f"{c['BLOCK_D']}/{c['BLOCK_DV']}", flags or "-",
                     b.num_warps, b.registers, b.spill_bytes, f"{b.shared_bytes / 1024:.0f}", b.tensor_core,
                     "yes" if b.fits else "NO", f"{b.seconds:.1f}"])
    return format_table(["kernel", "dtype", "tile / chunk", "D / Dv block", "flags", "warps", "regs",
                         "spill B", "shared KiB", "tensor core", "fits", "compile s"], rows)


def run(target: triton_aot.Target = triton_aot.H100, n: int = 4096, log=None) -> str:
    t0 = time.perf_counter()
    builds = compile_builds(target, n, log=log)
    bad = [b for b in builds if not b.fits]
    spills = [b for b in builds if b.spill_bytes]
    summary = (f"{len(builds)} kernel specialisations compiled for sm_{target.arch} in "
               f"{time.perf_counter() - t0:.0f} s; {len(bad)} do not fit the SM, {len(spills)} spill registers")
    return "\n".join([summary, "", build_table(builds)])


SWEEP_CANDIDATES = [(w, st) for w in (4, 8, 16) for st in (1, 2, 3)]
_KERNEL = {"_dense_fwd": "fwd", "_dense_bwd_dq": "dq", "_dense_bwd_dkdv": "dkdv"}


def _conventional_warps(fp32: bool, block_t: int) -> int:
    return 16 if fp32 else (4 if block_t <= 64 else 8)


def sweep(target: triton_aot.Target = triton_aot.H100, tiles=(64, 128), dims=(64, 128, 256), log=None) -> dict:
    """Compile the dense kernels under every ``(num_warps, num_stages)`` of
    :data:`SWEEP_CANDIDATES` for each class (fp32 or half, tile, head dim, bias) and choose per
    (class, kernel): a launch that fits the SM, then the fewest spilled bytes, then the most
    pipeline stages, then the warp count closest to the conventional one (4 for a 64-tile and 8
    for a 128-tile in half precision, 16 in fp32). Returns ``{class: {kernel: (warps, stages,
    spill bytes, shared bytes)}}`` (kernel None where no candidate fits); ``class`` is the key
    of ``graphattn.nn.triton.launch.DENSE_LAUNCH``."""
    import itertools

    from graphattn import rules
    from graphattn.nn.plan import build_plan

    chosen = {}
    for fp32, block_t, dim, bias in itertools.product((False, True), tiles, dims, (False, True)):
        n = 4 * block_t
        plan = build_plan(rules.band(n, radius=block_t + block_t // 2).edge_index, n, n, tile=block_t)
        dtype = torch.float32 if fp32 else torch.bfloat16
        by_kernel: dict = {}  # kernel -> candidate -> (spill bytes, shared bytes, fits)
        for cand in SWEEP_CANDIDATES:
            for name, res in _candidate_resources(plan, dim, dtype, bias, cand, target).items():
                by_kernel.setdefault(name, {})[cand] = res
        conv = _conventional_warps(fp32, block_t)
        pick = {name: _choose(by_cand, conv) for name, by_cand in by_kernel.items()}
        chosen[(fp32, block_t, dim, bias)] = pick
        if log is not None:
            log(f"  {(fp32, block_t, dim, bias)}: {pick}")
    return chosen


def _candidate_resources(plan, dim, dtype, bias, cand, target) -> dict:
    """Per dense kernel, (spill bytes, shared bytes, fits) of one launch candidate (the worst of
    its launches: fp32 runs dK/dV as two)."""
    from graphattn.nn.triton import launch

    old, launch.LAUNCH_OVERRIDE = launch.LAUNCH_OVERRIDE, cand
    try:
        with triton_aot.compile_only(target) as builds:
            _launch_all(plan, 2, dim, dtype, bias)
    finally:
        launch.LAUNCH_OVERRIDE = old
    res = {}
    for bd in builds:
        name = _KERNEL.get(bd.kernel)
        if name is not None:
            spill, shared, fits = res.get(name, (0, 0, True))
            res[name] = (max(spill, bd.spill_bytes), max(shared, bd.shared_bytes), fits and bd.fits)
    return res


def _choose(by_cand: dict, conv: int):
    """``(warps, stages, spill, shared)`` of the best fitting candidate, or None."""
    ok = [(c, r) for c, r in by_cand.items() if r[2]]
    if not ok:
        return None
    (w, st), (spill, shared, _) = min(
        ok, key=lambda cr: (cr[1][0], -cr[0][1], abs(cr[0][0].bit_length() - conv.bit_length())))
    return w, st, spill, shared


def sweep_table(chosen: dict) -> str:
    rows = []
    for (fp32, block_t, dim, bias), pick in chosen.items():
        for name in ("fwd", "dq", "dkdv"):
            r = pick.get(name)
            head = ["float32" if fp32 else "bf16/fp16", block_t, dim, "yes" if bias else "no", name]
            rows.append(head + (["-", "-", "-", "-"] if r is None else [r[0], r[1], r[2], f"{r[3] / 1024:.0f}"]))
    return format_table(["dtype", "tile", "head dim", "bias", "kernel", "warps", "stages", "spill B", "shared KiB"],
                        rows)


def main(args) -> int:
    import sys

    targets = {90: triton_aot.H100, 80: triton_aot.A100}
    target = targets[args.arch]
    why = triton_aot.unavailable_reason(target)
    if why:
        print(f"python -m graphattn.bench gpu-compile: {why}", file=sys.stderr)
        return 2
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    print(f"torch {torch.__version__}; compile-only for sm_{target.arch}")
    if args.sweep:
        chosen = sweep(target, log=log)
        print(sweep_table(chosen))
        print("\nDENSE_LAUNCH = {")
        for cls, pick in chosen.items():
            if all(pick.get(k) for k in ("fwd", "dq", "dkdv")):
                print(f"    {cls}: {{" + ", ".join(f'\"{k}\": {pick[k][:2]}' for k in ("fwd", "dq", "dkdv")) + "},")
        print("}")
        return 0
    print(run(target, n=args.n, log=log))
    return 0
