"""The atlas: every rule of :mod:`graphattn.rules` in a few variants.

* :func:`default_rules` builds each variant at ``n`` tokens: the ``graphattn atlas`` table.
* :func:`edge_estimates` says how many edges each of those would have, before anything is
  built: the atlas' memory check.
* :func:`atlas_panels` builds each variant at a size and with parameters chosen so that its
  structure shows in a picture: the PNG atlas (:func:`graphattn.plots.save_atlas`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from graphattn import rules
from graphattn.graph import AttentionGraph

__all__ = ["default_rules", "edge_estimates", "atlas_panels", "clustered_vectors", "ATLAS_CAPTION"]

_DIM = 32  # width of the stand-in vectors of the content-based rules (LSH, k-means)


def _table_blocks(n: int) -> tuple[int, int, int]:
    """Block sizes of the table at ``n`` tokens: block-local keeps 8 blocks; BigBird keeps 32
    blocks, so that its 8 blocks per query (3 window, 3 random, 2 global) stay a quarter of the
    keys instead of all of them (8 blocks of 64 at 512 tokens would be full attention); LSH
    chunks keep 16, so that a chunk and the one before it are an eighth of the keys."""
    return max(1, min(64, n // 8)), max(1, min(64, n // 32)), max(1, min(32, n // 16))


def _variants(n: int):
    """``(name, build, estimate)`` per variant at ``n`` tokens; ``estimate()`` is the edge count
    (exact, an upper bound, or the expectation for the random rules) computed without building."""
    x = torch.randn(n, _DIM, generator=torch.Generator().manual_seed(0))
    local, block, chunk = _table_blocks(n)
    keys = min(8, n - 1)
    degree = min(8, n - 1 - (n % 2))
    p = min(1.0, 8 / n)
    log2 = math.log2(max(n, 2))

    def lsh_pairs() -> int:  # same-bucket pairs summed over rounds: the union's upper bound
        buckets = rules.lsh_buckets(x, num_buckets=16, num_hashes=2, seed=0)
        return int(sum(torch.bincount(b).pow(2).sum() for b in buckets))

    return [
        ("full", lambda: rules.full(n), lambda: n * n),
        ("band r=8", lambda: rules.band(n, radius=8), lambda: n * 17),
        ("band r=8 causal", lambda: rules.band(n, radius=8, causal=True), lambda: n * 9),
        ("dilated r=4 d=3", lambda: rules.dilated(n, radius=4, dilation=3), lambda: n * 9),
        (f"block_local b={local}", lambda: rules.block_local(n, block_size=local), lambda: n * local),
        ("global_tokens [0]", lambda: rules.global_tokens(n, global_indices=[0]), lambda: 3 * n),
        ("global_nodes 2", lambda: rules.global_nodes(n, num_global=2), lambda: 5 * n + 8),
        ("random r=8", lambda: rules.random(n, num_random_keys=keys, seed=0), lambda: n * (keys + 1)),
        ("erdos_renyi p=8/n", lambda: rules.erdos_renyi(n, p=p, seed=0), lambda: round(n * (1 + (n - 1) * p))),
        ("random_regular d=8", lambda: rules.random_regular(n, degree=degree, seed=0), lambda: n * (degree + 1)),
        ("star_transformer", lambda: rules.star_transformer(n), lambda: 6 * n + 1),
        ("longformer r=8 +[0]", lambda: rules.longformer(n, radius=8, global_indices=[0]), lambda: 19 * n),
        ("etc g=4 r=8", lambda: rules.etc(n, num_global=4, radius=8), lambda: 25 * n + 16),
        (f"bigbird b={block}", lambda: rules.bigbird(n, block_size=block, seed=0),
         lambda: min(n * n, 10 * block * n)),
        (f"bigbird_etc b={block}", lambda: rules.bigbird_etc(n, block_size=block, seed=0),
         lambda: min((n + 2) ** 2, (6 * block + 2) * n + 2 * (n + 2))),
        ("bp_transformer k=2", lambda: rules.bp_transformer(n, k=2),
         lambda: round(n * (1 + log2 + 4 * math.log2(max(n / 2, 1))))),
        ("lsh 16 buckets", lambda: rules.lsh(x, num_buckets=16, num_hashes=2, seed=0), lsh_pairs),
        (f"lsh chunk={chunk}", lambda: rules.lsh(x, num_buckets=16, chunk=chunk, seed=0),
         lambda: min(n * n, 2 * chunk * n)),
        ("kmeans 8 clusters", lambda: rules.kmeans(x, num_clusters=8, seed=0),
         lambda: min(n * n, 8 * math.ceil(n / 8) ** 2 + n)),
    ]


def default_rules(n: int) -> dict[str, Callable[[], AttentionGraph]]:
    """One zero-argument builder per variant at ``n`` tokens (seed 0 where random); LSH and
    k-means run on ``n`` standard normal vectors of width 32 (seed 0)."""
    return {name: build for name, build, _ in _variants(n)}


def edge_estimates(n: int) -> dict[str, int]:
    """Edges of every :func:`default_rules` graph at ``n`` tokens, without building it: exact
    for the deterministic rules, the expectation for the random ones, and an upper bound for
    LSH (same-bucket pairs summed over rounds, from the bucket ids alone) and k-means."""
    return {name: int(estimate()) for name, _, estimate in _variants(n)}


def clustered_vectors(n: int, num_clusters: int, *, dim: int = _DIM, spread: float = 0.15,
                      seed: int = 0) -> torch.Tensor:
    """``[n, dim]`` vectors around ``num_clusters`` random unit directions, numbered cluster by
    cluster (tokens ``0..n/num_clusters-1`` in the first cluster, and so on): content with
    structure, as attention queries have, so that the content-based rules show theirs."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_clusters, dim, generator=gen), dim=1)
    member = torch.arange(n) * num_clusters // n
    return centres[member] + spread / math.sqrt(dim) * torch.randn(n, dim, generator=gen)


#: What the picture shows, for its caption.
ATLAS_CAPTION = (
    "Rows are queries i, columns keys j: a coloured cell is an edge (query i attends key j), coloured by the rule "
    "that made it. Each panel has its own size: n tokens, extra nodes (global, relay, embedding, span) after the "
    "dashed line. LSH and k-means run on 128 vectors drawn around 8 random directions and numbered cluster by "
    "cluster: similar vectors mostly share a bucket, and a cluster cut by a bucket boundary splits into stripes "
    "(hence several hashing rounds). Random rules use seed 0.")


def atlas_panels() -> dict[str, Callable[[], AttentionGraph]]:
    """One builder per variant for the picture: sizes and parameters chosen so that every
    pattern's structure is visible at a few millimetres per token (64 tokens for the
    position rules, 128 where blocks or clusters need room; BigBird with blocks of 4, so that
    its 8 blocks per query are a quarter of the keys, not all of them)."""
    x = clustered_vectors(128, 8)
    return {
        "full": lambda: rules.full(32),
        "band r=4": lambda: rules.band(64, radius=4),
        "band r=4 causal": lambda: rules.band(64, radius=4, causal=True),
        "dilated r=3 d=4": lambda: rules.dilated(64, radius=3, dilation=4),
        "block_local b=16": lambda: rules.block_local(64, block_size=16),
        "global_tokens [0, 32]": lambda: rules.global_tokens(64, global_indices=[0, 32]),
        "global_nodes 2": lambda: rules.global_nodes(62, num_global=2),
        "random r=4": lambda: rules.random(64, num_random_keys=4, seed=0),
        "erdos_renyi p=4/n": lambda: rules.erdos_renyi(64, p=4 / 64, seed=0),
        "random_regular d=4": lambda: rules.random_regular(64, degree=4, seed=0),
        "star_transformer": lambda: rules.star_transformer(32),
        "longformer r=4 +[0]": lambda: rules.longformer(64, radius=4, global_indices=[0]),
        "etc g=4 r=4": lambda: rules.etc(60, num_global=4, radius=4),
        "bigbird b=4": lambda: rules.bigbird(128, block_size=4, seed=0),
        "bigbird_etc b=4": lambda: rules.bigbird_etc(126, block_size=4, seed=0),
        "bp_transformer k=2": lambda: rules.bp_transformer(64, k=2),
        "lsh 8 buckets x2": lambda: rules.lsh(x, num_buckets=8, num_hashes=2, seed=0),
        "lsh 8 buckets chunk=16": lambda: rules.lsh(x, num_buckets=8, chunk=16, seed=0),
        "kmeans 8 clusters": lambda: rules.kmeans(x, num_clusters=8, seed=0),
    }
