"""Compile report of the fused kernels for a GPU, on any machine: ``python -m graphattn.bench gpu-compile``.

Runs the launches of the GPU benchmark (:mod:`graphattn.bench.gpu`: its exactness graphs in
fp32 and bf16 and its timed graphs in bf16 with 8 heads x 64, tiles 64 and 128) plus fp16,
dropout and an odd head dim, forward and backward, under
:func:`graphattn.nn.triton_aot.compile_only`: every kernel specialisation they launch is
compiled for the target (sm_90 by default: the H100/H200) and reported with its registers,
spills, shared memory, tensor-core use and whether a block fits the SM. Needs triton (with its
NVIDIA back end), not a GPU. Nothing is computed: the graphs are small stand-ins with the
same structure (dense tiles, sparse edges, split long rows) as the benchmark's.
"""

from __future__ import annotations

import time

import torch

from graphattn.bench._timing import format_table
from graphattn.nn import triton_aot

__all__ = ["cases", "compile_builds", "build_table", "run"]


def cases(n: int = 4096):
    """``(name, graph, nq, nk, heads, dim, dtype, bias, dropout_p, tile)`` of every launch
    configuration: the GPU benchmark's exactness graphs (fp32, bf16; 4 heads x 64), its timed
    patterns (bf16, 8 x 64, tiles 64 and 128), fp16 with dropout and head dim 24."""
    from graphattn import AttentionGraph, rules
    from graphattn.bench.attention import _graph
    from graphattn.bench.gpu import _exact_cases

    out = []
    for name, (build, with_bias, _flex) in _exact_cases(n).items():
        built = build()
        graph, nq, nk = (built, n, n) if isinstance(built, AttentionGraph) else built
        for dtype in (torch.float32, torch.bfloat16):
            out.append((name, graph, nq, nk, 4, 64, dtype, with_bias, 0.0, 64))
    for pattern in ("band", "bigbird", "random"):
        for tile in ((64, 128) if pattern != "random" else (64,)):
            out.append((f"bench {pattern}", _graph(pattern, n), n, n, 8, 64, torch.bfloat16, False, 0.0, tile))
    mixed = rules.band(n, radius=64) | rules.random(n, keys_per_query=8, seed=1)
    out.append(("band+random, dropout, head dim 24", mixed, n, n, 2, 24, torch.float16, True, 0.1, 32))
    return out


def compile_builds(target: triton_aot.Target = triton_aot.H100, n: int = 4096, log=None):
    """Compile every kernel the :func:`cases` launch; returns the ``KernelBuild`` list."""
    from graphattn.nn.plan import get_plan
    from graphattn.nn.triton_kernels import FusedGraphAttention

    with triton_aot.compile_only(target) as builds:
        for name, graph, nq, nk, heads, dim, dtype, with_bias, p, tile in cases(n):
            t0, before = time.perf_counter(), len(builds)
            plan = get_plan(graph, nq, nk, tile=tile, dense_threshold=0.25)
            q = torch.zeros(nq, heads, dim, dtype=dtype, requires_grad=True)
            k = torch.zeros(nk, heads, dim, dtype=dtype, requires_grad=True)
            v = torch.zeros(nk, heads, dim, dtype=dtype, requires_grad=True)
            bias = torch.zeros(plan.num_edges, heads, requires_grad=True) if with_bias else None
            out, _ = FusedGraphAttention.apply(q, k, v, bias, plan, dim ** -0.5, p, 7)
            out.backward(torch.zeros_like(out))
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


def main(args) -> int:
    import sys

    targets = {90: triton_aot.H100, 80: triton_aot.A100}
    target = targets[args.arch]
    why = triton_aot.unavailable_reason(target)
    if why:
        print(f"python -m graphattn.bench gpu-compile: {why}", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}; compile-only for sm_{target.arch}")
    print(run(target, n=args.n, log=lambda *a: print(*a, file=sys.stderr, flush=True)))
    return 0
