"""Model benchmark: ``python -m graphattn.bench models``.

Three tables, every cell in its own process so peak RSS (``ru_maxrss``) is that cell's own, as
in :mod:`graphattn.bench.attention`:

* **encoder**: peak memory and time of one forward+backward of a depth-``L`` SparseEncoder
  (band graph) with plain vs reversible residuals, and reversible + chunked FFN;
* **ffn**: the feed-forward network alone at a long length, unchunked vs chunked, forward
  without autograd and forward+backward (chunks checkpointed);
* **attention**: time of one LSHAttention and one RoutingAttention layer against a dense
  layer (same projections, ``scaled_dot_product_attention`` over all pairs) as n grows;
* **routing**: RoutingAttention against the implementation users would pick instead,
  lucidrains' ``routing-transformer`` (its ``SelfAttention``, all heads routed, the same number
  of clusters and the same window), LSHAttention at the same keys per query and dense SDPA:
  width 128, 4 heads, training mode, forward+backward. The peer is skipped, with the reason,
  where ``routing-transformer`` is not installed.

The encoder and ffn cells run twice: once with the default allocator (time, peak RSS) and once
with ``MALLOC_MMAP_THRESHOLD_=65536`` (peak RSS that tracks live tensors; see ``MMAP_ENV``).
"""

from __future__ import annotations

import json
import math
import resource
import sys

import torch

from graphattn.bench._timing import describe_cell, format_table, measure, spawn_worker

__all__ = ["run", "run_cell", "SUITES"]

SUITES = ("encoder", "ffn", "attention", "routing")
BAND_RADIUS = 64  # encoder graph: a band of radius 64
LSH_BUCKET = 64  # LSH: about 64 tokens per bucket, chunks of 64
ROUTING_E = 128  # routing suite: lucidrains' SelfAttention(dim=128, heads=4, window_size=64)
ROUTING_WINDOW = 64  # queries and keys per cluster; n // 64 clusters
ROUTING_VARIANTS = ("routing-transformer", "routing", "lsh", "dense")
_GIB = 1 << 30


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _step(fn, backward: bool, params=()):
    def step():
        if backward:
            out = fn()
            out.backward(torch.ones_like(out))
            for p in params:
                p.grad = None
        else:
            with torch.no_grad():
                fn()
    return step


def run_cell(suite: str, variant: str, n: int, E: int, H: int, depth: int, mode: str, repeats: int,
             warmup: int = 1) -> dict:
    """Run one cell in this process; returns a JSON-able dict (time, peak RSS). ``warmup``: untimed
    steps first (0 for a cell so large that one step is all there is time for: its one-time costs
    are then in the time)."""
    from graphattn import rules
    from graphattn.models import FeedForward, GraphRule, SparseEncoder
    from graphattn.nn.lsh import LSHAttention
    from graphattn.nn.routing import RoutingAttention
    from graphattn.nn.reversible import chunked_feed_forward

    # torch.utils.checkpoint imports ~0.1 GiB of modules on first use; load them in every cell so
    # the chunked variants' RSS is not charged for imports.
    chunked_feed_forward(torch.nn.Linear(2, 2), torch.randn(4, 2, requires_grad=True), chunks=2).sum().backward()
    gen = torch.Generator().manual_seed(0)
    backward = mode == "fwd+bwd"
    x = torch.randn(n, E, generator=gen).requires_grad_(backward)
    base = _rss_gib()
    if suite == "encoder":
        enc = SparseEncoder(E, H, graphs=GraphRule(rules.band, radius=BAND_RADIUS), num_layers=depth,
                            reversible=variant != "plain", chunked_ff=16 if variant == "reversible+chunked" else None)
        enc.graph(0, n)  # build the graph (and, on first use, its plan) outside the timing
        fn = lambda: enc(x)  # noqa: E731
        params = list(enc.parameters())
    elif suite == "ffn":
        ff = FeedForward(E)
        chunks = 1 if variant == "unchunked" else int(variant.split("=")[1])
        fn = (lambda: ff(x)) if chunks == 1 else (lambda: chunked_feed_forward(ff, x, chunks=chunks))  # noqa: E731
        params = list(ff.parameters())
    elif suite == "attention":
        if variant == "lsh":
            layer = LSHAttention(E, H, num_buckets=max(2, 2 * (n // (2 * LSH_BUCKET))), chunk=LSH_BUCKET, seed=0)
        elif variant == "routing":
            layer = RoutingAttention(E, H, num_clusters=int(math.isqrt(n)), seed=0).eval()
            with torch.no_grad():
                layer(x)  # seed the centroids outside the timing
        elif variant == "dense":
            layer = _DenseAttention(E, H)
        else:
            raise ValueError(f"expected variant in ('lsh', 'routing', 'dense'), got {variant!r}")
        fn = lambda: layer(x)  # noqa: E731
        params = list(layer.parameters())
    elif suite == "routing":
        x = torch.randn(1, n, E, generator=gen).requires_grad_(backward)
        made = _routing_layer(variant, n, E, H)
        if "skip" in made:
            return made
        layer = made["layer"]
        fn = (lambda: layer(x)[0]) if variant == "routing-transformer" else (lambda: layer(x))  # noqa: E731
        params = list(layer.parameters())
    else:
        raise ValueError(f"expected suite in {SUITES}, got {suite!r}")
    m = measure(_step(fn, backward, params), repeats=repeats, warmup=warmup)
    result = {"time_s": m.median_s, "peak_rss_gib": _rss_gib(), "base_rss_gib": base}
    if suite == "routing" and variant in ("routing", "lsh"):
        result["keys_per_query"] = _keys_per_query(layer, x)  # after the peak RSS is read
    return result


def _routing_layer(variant: str, n: int, E: int, H: int) -> dict:
    """The routing suite's layer for ``variant``, in training mode (``{"layer": ...}``), or
    ``{"skip": why}``. Routing's centroids (and the peer's k-means) start from the input in the
    untimed warm-up step, the peer's from its first call."""
    from graphattn.bench.peers import lucidrains_routing
    from graphattn.nn.lsh import LSHAttention
    from graphattn.nn.routing import RoutingAttention

    if variant == "routing-transformer":
        try:
            layer = lucidrains_routing(n, E, H, ROUTING_WINDOW)
        except ImportError as err:
            return {"skip": f"routing-transformer not installed ({err.name})"}
    elif variant == "routing":
        layer = RoutingAttention(E, H, cluster_size=ROUTING_WINDOW, num_clusters=max(1, n // ROUTING_WINDOW), seed=0)
    elif variant == "lsh":
        # chunks of w / 2: each query attends its chunk and the previous one, w - 1 keys, as
        # many as a routed query's cluster (w)
        chunk = ROUTING_WINDOW // 2
        layer = LSHAttention(E, H, num_buckets=max(2, 2 * (n // (2 * chunk))), chunk=chunk, seed=0)
    elif variant == "dense":
        layer = _DenseAttention(E, H)
    else:
        raise ValueError(f"expected variant in {ROUTING_VARIANTS}, got {variant!r}")
    return {"layer": layer.train()}


def _keys_per_query(layer, x: torch.Tensor) -> float:
    """Mean keys per query and head of the graphs ``layer`` attends over for ``x``."""
    with torch.no_grad():
        _, graphs = layer(x, return_graph=True)
    graphs = graphs if isinstance(graphs, list) else [graphs]
    edges = sum(int(g.head_mask.sum()) for g in graphs)
    return edges / (x.shape[-2] * len(graphs) * graphs[0].num_heads)


class _DenseAttention(torch.nn.Module):
    """The dense peer: q/k/v/out projections and SDPA over all pairs (no mask)."""

    def __init__(self, E: int, H: int):
        super().__init__()
        self.H = H
        self.qkv = torch.nn.Linear(E, 3 * E)
        self.out = torch.nn.Linear(E, E)

    def forward(self, x):
        if x.dim() == 3:  # [1, n, E]
            return self(x[0])[None]
        n, E = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.H, E // self.H).permute(1, 2, 0, 3)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(0, 1).reshape(n, E))


# glibc raises its mmap threshold after large frees, so later tensors of a few MiB come from the
# heap, which keeps its high-water mark: peak RSS then grows with the number of allocations, not
# with the live tensors. A fixed 64 KiB threshold makes every tensor its own mapping, returned on
# free, so peak RSS tracks the live tensors (at some cost in page faults, so times come from the
# default run).
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _spawn(spec: dict, timeout: int, env: dict | None = None) -> dict:
    return spawn_worker("graphattn.bench.models", spec, timeout, env)


def _cells(suites, ns, encoder_n, ffn_n, depth):
    if "encoder" in suites:
        for variant in ("plain", "reversible", "reversible+chunked"):
            yield "encoder", variant, encoder_n, depth, ("fwd+bwd",), None
    if "ffn" in suites:
        for variant in ("unchunked", "chunks=16"):
            yield "ffn", variant, ffn_n, 1, ("fwd", "fwd+bwd"), None
    if "attention" in suites:
        for n in ns:
            for variant in ("dense", "lsh", "routing"):
                skip = "n^2 pairs: dense only up to 16,384" if variant == "dense" and n > 16384 else None
                yield "attention", variant, n, 1, ("fwd", "fwd+bwd"), skip
    if "routing" in suites:
        for n in ns:
            for variant in ROUTING_VARIANTS:
                skip = "n^2 pairs: dense only up to 16,384" if variant == "dense" and n > 16384 else None
                yield "routing", variant, n, 1, ("fwd+bwd",), skip


def run(suites=SUITES, ns=(4096, 16384, 65536), encoder_n=4096, ffn_n=65536, depth=24, E=256, H=4, repeats=3,
        timeout=600, log=print) -> str:
    tables = []
    rows: dict = {s: [] for s in SUITES}
    for suite, variant, n, d, modes, skip in _cells(suites, ns, encoder_n, ffn_n, depth):
        for mode in modes:
            spec = dict(suite=suite, variant=variant, n=n, E=ROUTING_E if suite == "routing" else E, H=H, depth=d,
                        mode=mode, repeats=1 if suite == "encoder" or n >= 65536 else repeats)
            r = {"skip": skip} if skip else _spawn(spec, timeout)
            if suite in ("encoder", "ffn") and "skip" not in r:
                m = _spawn(spec, timeout, MMAP_ENV)
                r["mmap_gib"] = m["peak_rss_gib"] - m["base_rss_gib"] if "skip" not in m else None
            log(f"  {suite:9s} {variant:19s} n={n:<6d} {mode:8s} {describe_cell(r)}")
            rows[suite].append((variant, n, mode, r))
    heads = {
        "encoder": f"SparseEncoder, depth {depth}, E={E}, {H} heads, band radius {BAND_RADIUS}, one fwd+bwd",
        "ffn": f"FeedForward E={E} -> {4 * E} -> {E}",
        "attention": f"attention layer, E={E}, {H} heads (LSH: buckets of ~{LSH_BUCKET}, chunk {LSH_BUCKET}; "
                     "routing: sqrt(n) clusters, window n / clusters)",
    }
    for suite in SUITES:
        if not rows[suite]:
            continue
        if suite == "routing":
            tables.append(_routing_table(rows[suite], H))
            continue
        ref = {(n, mode): r for v, n, mode, r in rows[suite] if v in ("plain", "unchunked", "dense") and "time_s" in r}
        body = []
        for variant, n, mode, r in rows[suite]:
            mem = suite != "attention"
            if "skip" in r:
                body.append([variant, f"{n:,}", mode, "-", "-", "-"] + ["-"] * mem + [r["skip"]])
                continue
            base = ref.get((n, mode))
            ratio = f"{r['time_s'] / base['time_s']:.2f}x" if base is not None and base is not r else ""
            live = ([f"{r['mmap_gib']:.2f}" if r.get("mmap_gib") is not None else "-"]) if mem else []
            body.append([variant, f"{n:,}", mode, f"{r['time_s']:.3f}", f"{r['peak_rss_gib']:.2f}",
                         f"{r['peak_rss_gib'] - r['base_rss_gib']:.2f}", *live, ratio])
        cols = ["variant", "n", "mode", "time s", "peak RSS GiB", "peak - start GiB"]
        cols += ["peak - start GiB, mmap 64K"] if suite != "attention" else []
        tables.append(f"{heads[suite]}\n\n" + format_table(cols + ["time vs plain/dense"], body))
    return "\n\n".join(tables)


def _routing_table(rows, H: int) -> str:
    """The routing suite's table: time, keys per query and memory per variant and n, with the
    time relative to the peer's and to LSH's at the same n."""
    peer = {n: r for v, n, _, r in rows if v == "routing-transformer" and "time_s" in r}
    lsh = {n: r for v, n, _, r in rows if v == "lsh" and "time_s" in r}
    keys = {"routing-transformer": f"{ROUTING_WINDOW} per cluster", "dense": "n"}
    body = []
    for variant, n, _, r in rows:
        if "skip" in r:
            body.append([variant, f"{n:,}", "-", "-", "-", "-", r["skip"], ""])
            continue
        kpq = f"{r['keys_per_query']:.1f}" if "keys_per_query" in r else keys.get(variant, "-")
        ratios = [f"{r['time_s'] / ref[n]['time_s']:.2f}x" if n in ref and ref[n] is not r else ""
                  for ref in (peer, lsh)]
        body.append([variant, f"{n:,}", f"{r['time_s']:.3f}", kpq, f"{r['peak_rss_gib']:.2f}",
                     f"{r['peak_rss_gib'] - r['base_rss_gib']:.2f}", *ratios])
    head = (f"content-based attention, E={ROUTING_E}, {H} heads, training mode, one fwd+bwd (routing: n / "
            f"{ROUTING_WINDOW} clusters of {ROUTING_WINDOW} queries and {ROUTING_WINDOW} keys, lucidrains' "
            f"routing-transformer SelfAttention with the same clusters and window, no local heads; LSH: chunks "
            f"of {ROUTING_WINDOW // 2}, one round)")
    cols = ["variant", "n", "time s", "keys/query", "peak RSS GiB", "peak - start GiB", "time vs routing-transformer",
            "time vs lsh"]
    return f"{head}\n\n" + format_table(cols, body)


if __name__ == "__main__" and "--worker" in sys.argv:
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    torch.manual_seed(0)
    print(json.dumps(run_cell(**spec)))
