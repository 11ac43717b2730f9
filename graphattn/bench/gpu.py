"""GPU benchmark of the fused kernels: ``python -m graphattn.bench gpu [--out gpu_bench.md]``.

One prepared script, bounded in time (``--budget`` seconds, default 480), that writes one
markdown report (stdout and ``--out``):

1. **Exactness** on small graphs (band, BigBird, random, bipartite, biased, keyless, global
   tokens, per-head; at n = 4096 BigBird's global blocks and the global tokens take the split
   paths for long rows; :func:`graphattn.bench.cases.exact_cases`):
   the Triton backend's output and gradients against a float64 dense reference, in fp32 and
   bf16, and FlexAttention (graphattn's plan-built BlockMask; the native band mask) against the
   same reference and against the kernels.
2. **Timings**, bf16, ``H = 8`` heads of ``D = 64``: band radius 128 (n = 16k, 64k, 256k, 1M),
   BigBird (block 64) and a random graph with 32 keys per query (16k, 64k, 256k); forward and
   forward+backward of graphattn (Triton backend, tiles 64 and 128) against the CUDA peers of
   :mod:`graphattn.bench.peers` (dense SDPA: flash over all n^2 pairs without a mask, the dense
   speed reference; FlexAttention with the same mask; the gather/scatter message-passing core
   of PyG's TransformerConv). Each cell reports the median time, the achieved TFLOP/s of the
   graph's useful work (``4 E H D`` forward, 3.5x that forward+backward, as flash attention
   counts), its ratio to that work's floor at the bf16 matmul rate measured on the device in the
   same run, the peak memory, and one-time setup (plan, tables, BlockMask, compile). The report
   measures; it does not judge (no pass/fail lines).
3. **Launch sweep**, with the time left: band and BigBird at 64k in bf16 under every
   ``(num_warps, num_stages)`` of the compile sweep against the launch table's choice (which
   was chosen from registers and spills alone, without a GPU).

Every measurement runs in its own ``try``: an error or an out-of-memory lands in the table and
the script goes on. Cells run in priority order (64k first, then 1M band, then the other
sizes); when the budget is spent, the remaining cells say so. Without a CUDA device the script
refuses (exit status 2).
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback

import torch

from graphattn.bench import peers
from graphattn.bench._timing import format_table, matmul_rate
from graphattn.bench.cases import exact_cases, pattern_graph
from graphattn.bench.gpu_compile import SWEEP_CANDIDATES
from graphattn.nn.reference import dense_attention, dense_bias

__all__ = ["METHODS", "run", "exactness", "timings", "timing_table", "launch_sweep", "launch_table"]

H, D = 8, 64
BAND_N = (16384, 65536, 262144, 1048576)
OTHER_N = (16384, 65536, 262144)
_GIB = 1 << 30


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _err(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "OOM"
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text[:160]


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int = 1):
    """Median seconds of ``fn()`` (CUDA events on a GPU) and the peak memory of the timed runs."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / _GIB if cuda else float("nan")
    return statistics.median(times), peak


# ---------------------------------------------------------------------------------------------
# Exactness


def _dense(edge_index, nq, nk, head_mask, heads, device):
    if head_mask is None:
        m = torch.zeros(nq, nk, dtype=torch.bool, device=device)
        m[edge_index[1], edge_index[0]] = True
        return m
    m = torch.zeros(heads, nq, nk, dtype=torch.bool, device=device)
    for h in range(heads):
        e = edge_index[:, head_mask[:, h]]
        m[h, e[1], e[0]] = True
    return m


def exactness(device="cuda", n: int = 2048, heads: int = 4, dim: int = 64, dtypes=(torch.float32, torch.bfloat16),
              budget: Budget | None = None, log=print) -> str:
    """Markdown table: Triton and FlexAttention against the float64 reference."""
    from graphattn import AttentionGraph
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import Backend, use

    tol = {torch.float32: 1e-5, torch.bfloat16: 4 * 2**-8, torch.float16: 4 * 2**-11}
    rows = []

    def rel(a, b):
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)

    for name, (build, with_bias, flex_case) in exact_cases(n).items():
        for dtype in dtypes:
            if budget is not None and budget.left() < 60:
                rows.append([name, str(dtype).replace("torch.", ""), "-", "-", "-", "-", "-", "skipped: time budget"])
                continue
            t0 = time.perf_counter()
            note = []
            try:
                built = build()
                if isinstance(built, AttentionGraph):
                    graph, ei, nq, nk, hm = built.to(device), built.edge_index.to(device), n, n, built.head_mask
                else:
                    ei, nq, nk = built
                    ei = ei.to(device)
                    graph, hm = ei, None
                hm = None if hm is None else hm.to(device)
                gen = torch.Generator(device=device).manual_seed(0)
                def mk(*shape, dt=dtype):
                    return torch.randn(*shape, generator=gen, device=device).to(dt).requires_grad_(True)

                q, k, v = mk(nq, heads, dim), mk(nk, heads, dim), mk(nk, heads, dim)
                bias = mk(ei.shape[1], heads, dt=torch.float32) if with_bias else None
                wrt = (q, k, v) + ((bias,) if with_bias else ())
                mask = _dense(ei, nq, nk, hm, heads, device)
                ref_in = [t.detach().double().requires_grad_(True) for t in wrt]
                ref = dense_attention(*ref_in[:3], mask, dense_bias(ei, ref_in[3], nq, nk) if with_bias else None)[0]
                go = torch.randn(ref.shape, generator=gen, device=device, dtype=torch.float64)
                ref_grads = torch.autograd.grad(ref, ref_in, go)
                with use(Backend.TRITON):
                    out = graph_attention(q, k, v, graph, bias=bias)
                grads = torch.autograd.grad(out, wrt, go.to(dtype))
                e_out = rel(out, ref)
                e_grad = max(rel(g, r) for g, r in zip(grads, ref_grads))
                ok = e_out < tol[dtype] and e_grad < tol[dtype] and bool(torch.isfinite(out).all())
                flex_ref = flex_tri = "-"
                if flex_case and dtype == torch.float32:
                    try:
                        with use(Backend.FLEX):
                            fo = graph_attention(q, k, v, graph, bias=bias)
                        flex_ref, flex_tri = f"{rel(fo, ref):.1e}", f"{rel(fo, out):.1e}"
                        fg = torch.autograd.grad(fo, wrt, go.to(dtype))
                        flex_ref += f" / {max(rel(g, r) for g, r in zip(fg, ref_grads)):.1e}"
                    except Exception as exc:  # report, go on
                        flex_ref = (flex_ref if flex_ref != "-" else "") + f" ({_err(exc)})"
                    if name == "band r=128":
                        try:
                            from graphattn.bench.cases import RADIUS

                            fo = peers.flex_band(n, RADIUS, device)(q, k, v)
                            note.append(f"native flex band mask vs fp64 {rel(fo, ref):.1e}")
                        except Exception as exc:
                            note.append(f"native flex band: {_err(exc)}")
                rows.append([name, str(dtype).replace("torch.", ""), f"{e_out:.1e}", f"{e_grad:.1e}", flex_ref,
                             flex_tri, "yes" if ok else "NO", "; ".join(note)])
            except Exception as exc:  # report, go on
                traceback.print_exc(file=sys.stderr)
                rows.append([name, str(dtype).replace("torch.", ""), "-", "-", "-", "-", "NO", _err(exc)])
            log(f"  exactness {name} {dtype}: {rows[-1][2:]} ({time.perf_counter() - t0:.1f} s)")
            _free()
    return format_table(["graph", "dtype", "triton out err", "triton grad err", "flex out / grad err",
                         "flex vs triton", "within tol", "note"], rows)


# ---------------------------------------------------------------------------------------------
# Timings


METHODS = ("graphattn", "graphattn_t128") + peers.names("cuda")


def _cells():
    """(pattern, n, method) in priority order: 64k everywhere, 1M band, then the other sizes."""
    order = [(p, 65536) for p in ("band", "bigbird", "random")] + [("band", 1048576)]
    order += [(p, n) for p in ("band", "bigbird", "random") for n in (BAND_N if p == "band" else OTHER_N)
              if (p, n) not in order]
    return order


def _skip_reason(pattern, n, method, E, device, rate: float) -> str | None:
    free = torch.cuda.mem_get_info(device)[0] if torch.device(device).type == "cuda" else 64 * _GIB
    if method == "graphattn_t128" and pattern == "random":
        return "band and BigBird only (the random graph has no dense tiles)"
    if method == "dense_sdpa" and n > 262144:
        est = 3.5 * 4 * n * n * H * D / rate
        return f"n^2 work: ~{est:.0f} s per fwd+bwd at the measured matmul rate"
    if method == "gather_scatter" and E * H * D * 2 * 8 > 0.8 * free:
        return f"needs ~{E * H * D * 2 * 8 / _GIB:.0f} GiB (8 x [E, H, D] bf16)"
    return None


def timings(device="cuda", patterns=("band", "bigbird", "random"), max_n: int = 1048576, budget: Budget | None = None,
            repeats: int = 5, cells=None, rate: float | None = None, log=print) -> list[dict]:
    """Measure the cells (default: the priority list of :func:`_cells`); one dict per
    (pattern, n, method, mode) with ``time_s`` etc. or ``skip`` (the reason). ``rate``: the bf16
    matmul rate (FLOP/s) the FLOP floors are taken at (measured on ``device`` when None)."""
    from graphattn.nn import graph_attention
    from graphattn.nn.backends import use
    from graphattn.nn.plan import get_plan
    from graphattn.nn.triton.tables import get_tables

    if rate is None:
        rate = matmul_rate(4096 if torch.device(device).type == "cuda" else 512, device=device, dtype=torch.bfloat16)

    results = []
    for pattern, n in (_cells() if cells is None else cells):
        if pattern not in patterns or n > max_n:
            continue
        if budget is not None and budget.left() < 45:
            for method in METHODS:
                for mode in ("fwd", "fwd+bwd"):
                    results.append(dict(pattern=pattern, n=n, method=method, mode=mode, skip="time budget"))
            continue
        t0 = time.perf_counter()
        try:
            g = pattern_graph(pattern, n).to(device)
        except Exception as exc:
            for method in METHODS:
                for mode in ("fwd", "fwd+bwd"):
                    results.append(dict(pattern=pattern, n=n, method=method, mode=mode, skip=f"graph: {_err(exc)}"))
            continue
        E = g.num_edges
        build_s = time.perf_counter() - t0
        gen = torch.Generator(device=device).manual_seed(0)
        base = [torch.randn(n, H, D, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3)]
        grad_out = torch.randn(n, H, D, generator=gen, device=device, dtype=torch.bfloat16)
        log(f"  {pattern} n={n:,}: {E:,} edges (graph built in {build_s:.1f} s)")
        for method in METHODS:
            for mode in ("fwd", "fwd+bwd"):
                cell = dict(pattern=pattern, n=n, E=E, method=method, mode=mode)
                results.append(cell)
                why = _skip_reason(pattern, n, method, E, device, rate)
                if why:
                    cell["skip"] = why
                    continue
                if budget is not None and budget.left() < 30:
                    cell["skip"] = "time budget"
                    continue
                bwd = mode == "fwd+bwd"
                try:
                    _free()
                    ts = time.perf_counter()
                    q, k, v = (t.detach().requires_grad_(bwd) for t in base)
                    go = grad_out
                    if method.startswith("graphattn"):
                        tile = 128 if method == "graphattn_t128" else 64
                        plan = get_plan(g, n, n, tile=tile, dense_threshold=0.25)
                        get_tables(plan, q.device)
                        _sync(device)
                        cell["plan"] = f"{plan.dense_tiles:,} tiles, {plan.sparse_edges:,} sparse edges"

                        def fn(tile=tile):
                            with use("triton"):
                                return graph_attention(q, k, v, g, tile=tile)
                    else:
                        peer = peers.get(method)
                        if pattern not in peer.patterns.get(torch.device(device).type, ()):
                            raise RuntimeError(f"{method} does not run {pattern} on {device}")
                        if bwd and torch.device(device).type not in peer.backward:
                            raise RuntimeError(f"{method} has no backward on {device}")
                        f = peer.build(g, pattern, n, H, D, device)
                        fn = lambda: f(q, k, v)  # noqa: E731

                    if bwd:
                        def step():
                            for t in (q, k, v):
                                t.grad = None
                            fn().backward(go)
                    else:
                        def step():
                            with torch.no_grad():
                                fn()
                    step()  # first run: compile, plan, tables, BlockMask
                    _sync(device)
                    first = time.perf_counter() - ts
                    reps = repeats if n <= 262144 else 3
                    secs, peak = _time(step, device, reps, warmup=1)
                    flops = 4 * E * H * D * (3.5 if bwd else 1.0)
                    cell.update(time_s=secs, peak_gib=peak, first_s=first, tflops=flops / secs / 1e12,
                                floor_x=secs / (flops / rate))
                except Exception as exc:  # report, go on
                    if not isinstance(exc, torch.cuda.OutOfMemoryError):
                        traceback.print_exc(file=sys.stderr)
                    cell["skip"] = _err(exc)
                finally:
                    q = k = v = fn = step = None
                    _free()
                log(f"    {method:15s} {mode:8s} " + (f"{cell['time_s'] * 1e3:9.2f} ms  {cell['tflops']:7.1f} TFLOP/s"
                                                        if "time_s" in cell else cell.get("skip", "")))
        g = base = grad_out = None
        _free()
    return results


def timing_table(results: list[dict]) -> str:
    key = {"band": 0, "bigbird": 1, "random": 2}
    rows = []
    for r in sorted(results, key=lambda r: (key[r["pattern"]], r["n"], METHODS.index(r["method"]),
                                             r["mode"] != "fwd")):
        head = [r["pattern"], f"{r['n']:,}", f"{r['E']:,}" if "E" in r else "-", r["method"], r["mode"]]
        if "time_s" not in r:
            rows.append(head + ["-", "-", "-", "-", "-", r.get("skip", "")])
            continue
        note = ("tile 128: " if r["method"] == "graphattn_t128" else "") + r.get("plan", "")
        if r["method"] == "dense_sdpa":
            note = "full n^2 attention, no mask (flash)"
        elif r["method"] == "flex":
            note = "native band mask" if r["pattern"] == "band" else "BlockMask from the plan"
        rows.append(head + [f"{r['time_s'] * 1e3:.2f}", f"{r['tflops']:.1f}", f"{r['floor_x']:.1f}",
                            f"{r['peak_gib']:.2f}", f"{r['first_s']:.1f}", note])
    return format_table(["pattern", "n", "edges", "method", "mode", "ms", "TFLOP/s (graph work)",
                         "x FLOP floor", "peak GiB", "first call s", "note"], rows)


def launch_sweep(device="cuda", n: int = 65536, patterns=("band", "bigbird"), budget: Budget | None = None,
                 repeats: int = 5, log=print) -> list[dict]:
    """Time every ``(num_warps, num_stages)`` candidate of the compile sweep
    (:data:`graphattn.bench.gpu_compile.SWEEP_CANDIDATES`, applied to all three dense kernels)
    on the benchmark's bf16 graphs at ``n``, forward and forward+backward, next to the launch
    table's own choice (``table``): the measurements the static table
    (``graphattn.nn.triton.launch.DENSE_LAUNCH``, chosen from registers and spills) still lacks.
    Candidates that do not fit an SM report the error."""
    from graphattn.nn import graph_attention
    from graphattn.nn.triton import launch
    from graphattn.nn.backends import Backend, use

    results = []
    for pattern in patterns:
        g = pattern_graph(pattern, n).to(device)
        gen = torch.Generator(device=device).manual_seed(0)
        base = [torch.randn(n, H, D, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3)]
        go = torch.randn(n, H, D, generator=gen, device=device, dtype=torch.bfloat16)
        for cand in [None] + list(SWEEP_CANDIDATES):
            for mode in ("fwd", "fwd+bwd"):
                cell = dict(pattern=pattern, n=n, launch="table" if cand is None else f"{cand[0]} warps, {cand[1]} stages",
                            mode=mode)
                results.append(cell)
                if budget is not None and budget.left() < 20:
                    cell["skip"] = "time budget"
                    continue
                old, launch.LAUNCH_OVERRIDE = launch.LAUNCH_OVERRIDE, cand
                try:
                    q, k, v = (t.detach().requires_grad_(mode != "fwd") for t in base)

                    def step():
                        with use(Backend.TRITON):
                            if mode == "fwd":
                                with torch.no_grad():
                                    graph_attention(q, k, v, g)
                            else:
                                for t in (q, k, v):
                                    t.grad = None
                                graph_attention(q, k, v, g).backward(go)

                    step()  # compile
                    secs, _ = _time(step, device, repeats, warmup=1)
                    cell["time_s"] = secs
                except Exception as exc:  # out of resources and the like: report, go on
                    cell["skip"] = _err(exc)
                finally:
                    launch.LAUNCH_OVERRIDE = old
                    q = k = v = step = None
                log(f"    launch {pattern} {cell['launch']:18s} {mode:8s} "
                    + (f"{cell['time_s'] * 1e3:9.2f} ms" if "time_s" in cell else cell["skip"]))
        g = base = go = None
        _free()
    return results


def launch_table(results: list[dict]) -> str:
    best = {}
    for r in results:
        if "time_s" in r:
            key = (r["pattern"], r["mode"])
            best[key] = min(best.get(key, float("inf")), r["time_s"])
    rows = []
    for r in results:
        t = r.get("time_s")
        rows.append([r["pattern"], f"{r['n']:,}", r["launch"], r["mode"], "-" if t is None else f"{t * 1e3:.2f}",
                     "-" if t is None else f"{t / best[(r['pattern'], r['mode'])]:.2f}", r.get("skip", "")])
    return format_table(["pattern", "n", "launch (all dense kernels)", "mode", "ms", "x best", "note"], rows)


def run(out_path: str = "gpu_bench.md", budget_s: float = 480.0, device="cuda", max_n: int = 1048576,
        exact_n: int = 4096, log=print) -> str:
    """Run the whole benchmark and return (and write) the markdown report."""
    import platform

    budget = Budget(budget_s)
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    rate = matmul_rate(4096 if dev.type == "cuda" else 512, device=dev, dtype=torch.bfloat16)
    header = (f"# graphattn GPU benchmark\n\n{name}; torch {torch.__version__}, triton {tv}; "
              f"bf16 matmul rate measured in this run: {rate / 1e12:.1f} TFLOP/s\n")
    log(header)
    log("exactness ...")
    exact = exactness(device, n=exact_n, heads=4, dim=64, budget=budget, log=log)
    exact_budget_left = budget.left()
    log(f"timings ... ({exact_budget_left:.0f} s left)")
    results = timings(device, max_n=max_n, budget=budget, rate=rate, log=log)
    log(f"launch sweep ... ({budget.left():.0f} s left)")
    launches = launch_sweep(device, n=min(65536, max_n), budget=budget, log=log)
    report = "\n".join([
        header,
        f"## Exactness (n = {exact_n:,}, 4 heads x 64; normwise relative errors vs float64 dense; "
        "tolerance fp32 1e-5, bf16 4 * 2^-8)\n", exact, "",
        f"## Timings (bf16, {H} heads x {D}; medians; FLOP floor = graph work / {rate / 1e12:.1f} TFLOP/s)\n",
        timing_table(results), "",
        "## Launch sweep (bf16; every (warps, stages) candidate against the launch table's choice)\n",
        launch_table(launches), "",
        f"Total {budget_s - budget.left():.0f} s.",
    ])
    with open(out_path, "w") as fh:
        fh.write(report + "\n")
    return report


def main(args) -> int:
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("python -m graphattn.bench gpu needs a CUDA device, and torch sees none "
              f"(torch {torch.__version__}, torch.version.cuda = {torch.version.cuda}); nothing was run.",
              file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = run(args.out, budget_s=args.budget, device=device, max_n=args.max_n, exact_n=args.exact_n,
                 log=lambda *a: print(*a, file=sys.stderr, flush=True))
    print(report)
    return 0
