"""The graphs the benchmarks share: the timed patterns (band, BigBird, random) and the exactness
graphs of the GPU benchmark, which the compile report (:mod:`graphattn.bench.gpu_compile`)
compiles without a GPU."""

from __future__ import annotations

import torch

__all__ = ["PATTERNS", "RADIUS", "BLOCK", "RANDOM_KEYS", "pattern_graph", "keys_per_query", "exact_cases"]

PATTERNS = ("band", "bigbird", "random")
RADIUS, BLOCK, RANDOM_KEYS = 128, 64, 32


def pattern_graph(pattern: str, n: int):
    """The timed graph of ``pattern`` at ``n`` tokens: band radius 128, BigBird with blocks of 64
    (seed 0), or 32 random keys per query (seed 0)."""
    from graphattn import rules

    if pattern == "band":
        return rules.band(n, radius=RADIUS)
    if pattern == "bigbird":
        return rules.bigbird(n, block_size=BLOCK, seed=0)
    if pattern == "random":
        return rules.random(n, num_random_keys=RANDOM_KEYS, seed=0)
    raise ValueError(f"expected pattern in {PATTERNS}, got {pattern!r}")


def keys_per_query(pattern: str) -> int:
    """Keys per query of the timed pattern far from the ends (BigBird: 3 window, 3 random and 2
    global blocks)."""
    per = {"band": 2 * RADIUS + 1, "bigbird": 8 * BLOCK, "random": RANDOM_KEYS + 1}
    if pattern not in per:
        raise ValueError(f"expected pattern in {PATTERNS}, got {pattern!r}")
    return per[pattern]


def exact_cases(n: int) -> dict:
    """``name -> (build, with_bias, flex_case)`` of the GPU benchmark's exactness graphs at ``n``:
    ``build()`` returns an AttentionGraph or ``(edge_index, nq, nk)`` (a bipartite edge list);
    ``with_bias`` adds a learned per-edge bias; ``flex_case`` marks the graphs FlexAttention is
    checked on too."""
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

    def heads4():
        return compose.stack_heads([rules.band(n, radius=32), rules.band(n, radius=96),
                                    rules.dilated(n, radius=16, dilation=4),
                                    rules.random(n, num_random_keys=16, seed=3)])

    return {
        "band r=128": (lambda: pattern_graph("band", n), False, True),
        "bigbird b=64": (lambda: pattern_graph("bigbird", n), False, True),
        "random 32": (lambda: pattern_graph("random", n), False, False),
        "bipartite": (bipartite, False, False),
        "band+random, bias": (lambda: rules.band(n, radius=64) | rules.random(n, num_random_keys=8, seed=1), True, True),
        "keyless rows": (keyless, False, False),
        "band + 2 global tokens": (lambda: rules.band(n, radius=64) | rules.global_tokens(n, global_indices=[0, n // 2]),
                                   True, False),
        "per-head (4 layouts)": (heads4, False, False),
    }
