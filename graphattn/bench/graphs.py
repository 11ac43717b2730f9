"""Graph-construction benchmark: ``python -m graphattn.bench graphs``.

Each rule is timed at scale and set against the bare peer that any construction must pay at
least: an ``arange``-based ``[2, E]`` edge list of the same size (for the band, exactly the same
edges built without validation, borders or labels).
"""

from __future__ import annotations

import torch

from graphattn import rules
from graphattn.bench._timing import format_table, measure

__all__ = ["run", "bare_band"]


def bare_band(n: int, radius: int) -> torch.Tensor:
    """The peer: interior-only band edges with plain ``arange`` arithmetic (no border handling)."""
    i = torch.arange(n)
    key = (i[:, None] + torch.arange(-radius, radius + 1)).reshape(-1)
    return torch.stack([key, i.repeat_interleave(2 * radius + 1)])


def _bare_edges(num_edges: int) -> torch.Tensor:
    # Same-size peer for rules with no closed form: the cheapest [2, E] int64 edge list.
    return torch.stack([torch.arange(num_edges), torch.arange(num_edges)])


def cases(scale: float = 1.0):
    n20 = max(int(2**20 * scale), 64)
    n18 = max(int(2**18 * scale), 64)
    n16 = max(int(2**16 * scale), 64)
    x = torch.randn(n16, 64, generator=torch.Generator().manual_seed(0))
    return [
        ("band r=16", n20, lambda: rules.band(n20, radius=16), lambda: bare_band(n20, 16)),
        ("dilated r=8 d=4", n20, lambda: rules.dilated(n20, radius=8, dilation=4), None),
        ("block_local b=64", n20, lambda: rules.block_local(n20, block_size=64), None),
        ("random r=32", n16, lambda: rules.random(n16, num_random_keys=32, seed=0), None),
        ("erdos_renyi p=32/n", n16, lambda: rules.erdos_renyi(n16, p=32 / n16, seed=0), None),
        ("random_regular d=8", n16, lambda: rules.random_regular(n16, degree=8, seed=0), None),
        ("star_transformer", n20, lambda: rules.star_transformer(n20), None),
        ("longformer r=128 +2 global", n18, lambda: rules.longformer(n18, radius=128, global_indices=[0, 1]), None),
        ("etc g=16 r=64", n18, lambda: rules.etc(n18, num_global=16, radius=64), None),
        ("bigbird b=64", n18, lambda: rules.bigbird(n18, seed=0), None),
        ("bigbird_etc b=64", n18, lambda: rules.bigbird_etc(n18, seed=0), None),
        ("bp_transformer k=4", n18, lambda: rules.bp_transformer(n18, k=4), None),
        ("lsh 64 buckets chunk=64", n16, lambda: rules.lsh(x, num_buckets=64, num_hashes=2, chunk=64, seed=0), None),
        ("kmeans 64 clusters", n16, lambda: rules.kmeans(x, num_clusters=64, iters=5, seed=0), None),
    ]


def run(scale: float = 1.0, repeats: int = 3, only: str | None = None, log=None) -> str:
    """The table; ``log(line)`` (optional) gets a progress line per rule."""
    rows = []
    for name, n, build, peer in cases(scale):
        if only and only not in name:
            continue
        m = measure(build, repeats=repeats)
        g = m.result
        e = g.num_edges
        del g
        pm = measure(peer if peer is not None else (lambda e=e: _bare_edges(e)), repeats=repeats)
        rows.append([name, f"{n:,}", f"{e:,}", f"{e / n:.1f}", f"{m.median_s:.3f}",
                     f"{e / m.median_s / 1e6:.0f}", f"{pm.median_s:.3f}", f"{m.median_s / pm.median_s:.1f}x"])
        if log is not None:
            log(f"  {name:28s} n={n:<9,d} {e:>13,d} edges  build {m.median_s:.3f} s  bare peer {pm.median_s:.3f} s")
    return format_table(
        ["rule", "n", "edges", "edges/token", "build s", "Medges/s", "bare peer s", "vs peer"], rows)
