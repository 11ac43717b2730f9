"""Every catalog rule at a default size, for the overview table and the CLI."""

from __future__ import annotations

from typing import Callable

import torch

from graphattn import rules
from graphattn.graph import AttentionGraph, NodeType

__all__ = ["default_rules", "overview"]


def default_rules(n: int) -> dict[str, Callable[[], AttentionGraph]]:
    """One zero-argument builder per catalog variant at ``n`` tokens (seed 0 where random)."""
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    block = max(1, min(64, n // 8))
    return {
        "full": lambda: rules.full(n),
        "band r=8": lambda: rules.band(n, radius=8),
        "band r=8 causal": lambda: rules.band(n, radius=8, causal=True),
        "dilated r=4 d=3": lambda: rules.dilated(n, radius=4, dilation=3),
        f"block_local b={block}": lambda: rules.block_local(n, block_size=block),
        "global_tokens [0]": lambda: rules.global_tokens(n, global_indices=[0]),
        "global_nodes 2": lambda: rules.global_nodes(n, num_global=2),
        "random r=8": lambda: rules.random(n, num_random_keys=min(8, n - 1), seed=0),
        "erdos_renyi p=8/n": lambda: rules.erdos_renyi(n, p=min(1.0, 8 / n), seed=0),
        "random_regular d=8": lambda: rules.random_regular(n, degree=min(8, n - 1 - (n % 2)), seed=0),
        "star_transformer": lambda: rules.star_transformer(n),
        "longformer r=8 +[0]": lambda: rules.longformer(n, radius=8, global_indices=[0]),
        "etc g=4 r=8": lambda: rules.etc(n, num_global=4, radius=8),
        f"bigbird b={block}": lambda: rules.bigbird(n, block_size=block, seed=0),
        f"bigbird_etc b={block}": lambda: rules.bigbird_etc(n, block_size=block, seed=0),
        "bp_transformer k=2": lambda: rules.bp_transformer(n, k=2),
        "lsh 16 buckets": lambda: rules.lsh(x, num_buckets=16, num_hashes=2, seed=0),
        "lsh chunk=32": lambda: rules.lsh(x, num_buckets=16, chunk=32, seed=0),
        "kmeans 8 clusters": lambda: rules.kmeans(x, num_clusters=8, seed=0),
    }


def overview(n: int = 1024) -> str:
    """A table of every rule at ``n``: nodes, edges, keys per token query (mean/max), edges/token."""
    from graphattn.bench._timing import format_table

    rows = []
    for name, build in default_rules(n).items():
        g = build()
        deg = g.keys_per_query()[g.node_type == NodeType.TOKEN].double()
        rows.append([name, g.num_nodes, g.num_edges, f"{deg.mean():.1f}", int(deg.max()),
                     f"{g.num_edges / n:.1f}", f"{g.density():.4f}"])
    return format_table(["rule", "nodes", "edges", "keys/query mean", "max", "edges/token", "density"], rows)
