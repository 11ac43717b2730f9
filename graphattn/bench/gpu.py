"""GPU benchmark of the fused kernels: ``python -m graphattn.bench gpu [--out gpu_bench.md]``.

One prepared script, bounded in time (``--budget`` seconds, default 480: it fits a 10-minute
slot with room for start-up and the last cell), that writes one markdown report (stdout and ``--out``):

1. **Exactness** on small graphs (band, BigBird, random, bipartite, biased, keyless, global
   tokens, per-head; at n = 4096 BigBird's global blocks and the global tokens take the split
   paths for long rows):
   the Triton backend's output and gradients against a float64 dense reference, in fp32 and
   bf16, and FlexAttention (graphattn's plan-built BlockMask; the native band mask) against the
   same reference and against the kernels.
2. **Timings**, bf16, ``H = 8`` heads of ``D = 64``: band radius 128 (n = 16k, 64k, 256k, 1M),
   BigBird (block 64) and a random graph with 32 keys per query (16k, 64k, 256k); forward and
   forward+backward of graphattn (Triton backend) against dense SDPA (flash, full n^2 attention
   without a mask: the dense speed reference), FlexAttention with the same mask, and the
   gather/scatter message-passing core (PyG's TransformerConv). Each cell reports the median
   time, the achieved TFLOP/s of the graph's useful work (``4 E H D`` forward, 3.5x that
   forward+backward, as flash attention counts) and the ratio to that work's floor at
   ``PEAK_TFLOPS``, the peak memory, and one-time setup (plan, tables, BlockMask, compile).
3. **Targets** of issue 7: within 1.5x of FlexAttention on band and BigBird, at least 20x faster
   than gather/scatter on the random graph, band at 1M tokens forward+backward fits.
4. **Launch sweep**, with the time left: band and BigBird at 64k in bf16 under every
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

from graphattn.bench._timing import format_table
from graphattn.bench.attention import BLOCK, RADIUS, RANDOM_KEYS, _graph  # the CPU bench's patterns
from graphattn.nn.reference import dense_attention, dense_bias

__all__ = ["PEAK_TFLOPS", "run", "exactness", "timings", "targets", "launch_sweep", "launch_table"]

PEAK_TFLOPS = 790.0  # H200 bf16 dense matmul throughput, as issue 7 takes it
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


def _exact_cases(n: int):
    from graphattn import AttentionGraph, compose, rules

    def bipartite():
        gen = torch.Generator().manual_seed(0)
        nq, nk = 3 * n // 4, n
        mask = torch.rand(nq, nk, generator=gen) < 8 / nk
        mask[:, nk // 4: nk // 4 + 128] = True  # dense stripe: dense tiles and sparse edges
        mask[7] = False  # keyless
        key, query = mask.t().nonzero(as_tuple=True)
        ei = torch.stack([key, query])
        return ei[:, torch.argsort(ei[1] * nk + ei[0])], nq, nk

    def keyless():
        g = rules.band(n, radius=64)
        keep = (g.edge_index[1] % 5) != 3
        return AttentionGraph.from_edge_index(g.edge_index[:, keep], num_nodes=n)

    heads4 = compose.stack_heads([rules.band(n, radius=32), rules.band(n, radius=96),
                                  rules.dilated(n, radius=16, dilation=4), rules.random(n, num_random_keys=16, seed=3)])
    return {
        "band r=128": (lambda: rules.band(n, radius=RADIUS), False, True),
        "bigbird b=64": (lambda: rules.bigbird(n, block_size=BLOCK, seed=0), False, True),
        "random 32": (lambda: rules.random(n, num_random_keys=RANDOM_KEYS, seed=0), False, False),
        "bipartite": (bipartite, False, False),
        "band+random, bias": (lambda: rules.band(n, radius=64) | rules.random(n, num_random_keys=8, seed=1), True, True),
        "keyless rows": (keyless, False, False),
        "band + 2 global tokens": (lambda: rules.band(n, radius=64) | rules.global_tokens(n, global_indices=[0, n // 2]),
                                   True, False),
        "per-head (4 layouts)": (lambda: heads4, False, False),
    }


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

    for name, (build, with_bias, flex_case) in _exact_cases(n).items():
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
                            fo = _flex_band(n, device)(*(_bhnd(t) for t in (q, k, v)))[0].transpose(0, 1)
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


def _bhnd(t):
    return t.detach().transpose(0, 1)[None].contiguous().requires_grad_(t.requires_grad)


_flex_compiled = None


def _compiled_flex():
    global _flex_compiled
    if _flex_compiled is None:
        import torch._dynamo

        from torch.nn.attention.flex_attention import flex_attention

        # One compile per shape: raise dynamo's recompile limit so no size falls back to eager.
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled


def _flex_band(n: int, device, block: int = 128):
    """FlexAttention with the band mask the way a FlexAttention user writes it; the BlockMask is
    built from the band's formula (``create_block_mask`` would evaluate all n^2 cells)."""
    from torch.nn.attention.flex_attention import BlockMask

    nb = -(-n // block)
    w = 2 * (-(-RADIUS // block)) + 1  # key blocks a query block can touch
    qb = torch.arange(nb, device=device)[:, None]
    kb = qb - w // 2 + torch.arange(w, device=device)[None, :]
    inside = (kb >= 0) & (kb < nb)
    # Full block: the farthest pair is within the radius and the block lies inside [0, n).
    far = torch.maximum((qb * block - (kb * block + block - 1)).abs(), (qb * block + block - 1 - kb * block).abs())
    full = inside & (far <= RADIUS) & ((qb + 1) * block <= n) & ((kb + 1) * block <= n)
    partial = inside & ~full

    def lists(sel):
        counts = sel.sum(-1).to(torch.int32)
        idx = torch.zeros(nb, max(nb, w), dtype=torch.int32, device=device)  # flex: >= one slot per key block
        order = torch.sort((~sel).to(torch.int8), dim=-1, stable=True).indices
        idx[:, :w] = torch.gather(kb.clamp(0, nb - 1), 1, order).to(torch.int32)
        return counts[None, None], idx[None, None]

    def band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= RADIUS

    kn, ki = lists(partial)
    fn, fi = lists(full)
    mask = BlockMask.from_kv_blocks(kn, ki, fn, fi, BLOCK_SIZE=block, mask_mod=band, seq_lengths=(n, n))
    flex = _compiled_flex() if torch.device(device).type == "cuda" else None
    if flex is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

    return lambda q, k, v: (flex(q, k, v, block_mask=mask),)


METHODS = ("graphattn", "graphattn_t128", "flex", "dense_sdpa", "gather_scatter")


def _cells():
    """(pattern, n, method) in priority order: 64k everywhere, 1M band, then the other sizes."""
    order = [(p, 65536) for p in ("band", "bigbird", "random")] + [("band", 1048576)]
    order += [(p, n) for p in ("band", "bigbird", "random") for n in (BAND_N if p == "band" else OTHER_N)
              if (p, n) not in order]
    return order


def _skip_reason(pattern, n, method, E, device) -> str | None:
    free = torch.cuda.mem_get_info(device)[0] if torch.device(device).type == "cuda" else 64 * _GIB
    if method == "graphattn_t128" and pattern == "random":
        return "band and BigBird only (the random graph has no dense tiles)"
    if method == "dense_sdpa" and n > 262144:
        est = 3.5 * 4 * n * n * H * D / (PEAK_TFLOPS * 1e12)
        return f"n^2 work: ~{est:.0f} s per fwd+bwd at peak"
    if method == "gather_scatter" and E * H * D * 2 * 8 > 0.8 * free:
        return f"needs ~{E * H * D * 2 * 8 / _GIB:.0f} GiB (8 x [E, H, D] bf16)"
    return None


def timings(device="cuda", patterns=("band", "bigbird", "random"), max_n: int = 1048576, budget: Budget | None = None,
            repeats: int = 5, cells=None, log=print) -> list[dict]:
    """Measure the cells (default: the priority list of :func:`_cells`); one dict per
    (pattern, n, method, mode) with ``time_s`` etc. or ``skip`` (the reason)."""
    from graphattn.nn import graph_attention
    from graphattn.nn.triton.tables import get_tables
    from graphattn.nn.backends import Backend, use
    from graphattn.nn.plan import get_plan

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
            g = _graph(pattern, n).to(device)
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
                why = _skip_reason(pattern, n, method, E, device)
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
                    if method != "dense_sdpa" and not (method == "flex" and pattern == "band"):
                        q, k, v = (t.detach().requires_grad_(bwd) for t in base)
                        go = grad_out
                        tile, backend = 64, Backend.FLEX
                        if method.startswith("graphattn"):
                            tile, backend = (128 if method == "graphattn_t128" else 64), Backend.TRITON
                            plan = get_plan(g, n, n, tile=tile, dense_threshold=0.25)
                            get_tables(plan, q.device)
                            _sync(device)
                            cell["plan"] = f"{plan.dense_tiles:,} tiles, {plan.sparse_edges:,} sparse edges"
                        if method == "gather_scatter":
                            from graphattn.bench.peers import gather_scatter

                            ei = g.edge_index
                            fn = lambda: gather_scatter(q, k, v, ei)  # noqa: E731
                        else:
                            def fn(backend=backend, tile=tile):
                                with use(backend):
                                    return graph_attention(q, k, v, g, tile=tile)
                    else:
                        q, k, v = (_bhnd(t).requires_grad_(bwd) for t in base)
                        go = _bhnd(grad_out)
                        if method == "flex":  # band: the native mask
                            f = _flex_band(n, device)
                            fn = lambda: f(q, k, v)[0]  # noqa: E731
                        else:
                            from torch.nn.attention import SDPBackend, sdpa_kernel

                            def fn():
                                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)

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
                                floor_x=secs / (flops / (PEAK_TFLOPS * 1e12)))
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


def targets(results: list[dict]) -> str:
    """The issue's targets, checked on the measured cells."""
    by = {(r["pattern"], r["n"], r["method"], r["mode"]): r for r in results}
    rows = []
    for (pattern, n, method, mode), r in sorted(by.items()):
        if not method.startswith("graphattn") or "time_s" not in r:
            continue
        if pattern in ("band", "bigbird"):
            f = by.get((pattern, n, "flex", mode), {})
            if "time_s" in f:
                ratio = r["time_s"] / f["time_s"]
                what = "graphattn" if method == "graphattn" else "graphattn (tile 128)"
                rows.append([f"{pattern} n={n:,} {mode}: {what} / FlexAttention <= 1.5", f"{ratio:.2f}",
                             "PASS" if ratio <= 1.5 else "FAIL"])
        if method != "graphattn":
            continue
        if pattern == "random":
            gs = by.get((pattern, n, "gather_scatter", mode), {})
            if "time_s" in gs:
                ratio = gs["time_s"] / r["time_s"]
                rows.append([f"random n={n:,} {mode}: gather/scatter / graphattn >= 20", f"{ratio:.1f}",
                             "PASS" if ratio >= 20 else "FAIL"])
    big = by.get(("band", 1048576, "graphattn", "fwd+bwd"))
    if big is not None:
        fits = "time_s" in big
        rows.append(["band n=1,048,576 fwd+bwd fits on one GPU",
                     f"{big['peak_gib']:.1f} GiB peak" if fits else big.get("skip", "not run"),
                     "PASS" if fits else "FAIL"])
    return format_table(["target", "measured", "result"], rows) if rows else "(no target could be checked)"


def launch_sweep(device="cuda", n: int = 65536, patterns=("band", "bigbird"), budget: Budget | None = None,
                 repeats: int = 5, log=print) -> list[dict]:
    """Time every ``(num_warps, num_stages)`` candidate of the compile sweep
    (:data:`graphattn.bench.gpu_compile.SWEEP_CANDIDATES`, applied to all three dense kernels)
    on the benchmark's bf16 graphs at ``n``, forward and forward+backward, next to the launch
    table's own choice (``table``): the measurements the static table
    (``graphattn.nn.triton.launch.DENSE_LAUNCH``, chosen from registers and spills) still lacks.
    Candidates that do not fit an SM report the error."""
    from graphattn.bench.gpu_compile import SWEEP_CANDIDATES
    from graphattn.nn import graph_attention
    from graphattn.nn.triton import launch
    from graphattn.nn.backends import Backend, use

    results = []
    for pattern in patterns:
        g = _graph(pattern, n).to(device)
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
    header = (f"# graphattn GPU benchmark\n\n{name}; torch {torch.__version__}, triton {tv}; "
              f"peak taken as {PEAK_TFLOPS:.0f} TFLOP/s (bf16)\n")
    log(header)
    log("exactness ...")
    exact = exactness(device, n=exact_n, heads=4, dim=64, budget=budget, log=log)
    exact_budget_left = budget.left()
    log(f"timings ... ({exact_budget_left:.0f} s left)")
    results = timings(device, max_n=max_n, budget=budget, log=log)
    log(f"launch sweep ... ({budget.left():.0f} s left)")
    launches = launch_sweep(device, n=min(65536, max_n), budget=budget, log=log)
    report = "\n".join([
        header,
        f"## Exactness (n = {exact_n:,}, 4 heads x 64; normwise relative errors vs float64 dense; "
        "tolerance fp32 1e-5, bf16 4 * 2^-8)\n", exact, "",
        f"## Timings (bf16, {H} heads x {D}; medians; FLOP floor = graph work / {PEAK_TFLOPS:.0f} TFLOP/s)\n",
        timing_table(results), "",
        "## Targets (issue 7)\n", targets(results), "",
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
