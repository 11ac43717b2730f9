"""Edge-construction rules: every sparse-attention variant as a pure function returning an
:class:`~graphattn.graph.AttentionGraph` (conventions: see :mod:`graphattn`).

Position-based rules take ``n`` then keyword-only parameters, and a ``queries=range(a, b)``
argument that builds only the rows of that query range, identical to that slice of the full
graph (the sharding hook). Content-based rules (``lsh``, ``kmeans``) take the vectors first.

One module per rule family: :mod:`~graphattn.rules.position` (full, band, dilated,
block-local), :mod:`~graphattn.rules.globals` (ITC global tokens, ETC global nodes),
:mod:`~graphattn.rules.random_graphs`, :mod:`~graphattn.rules.star`,
:mod:`~graphattn.rules.sliding_window` (Longformer), :mod:`~graphattn.rules.global_local`
(ETC), :mod:`~graphattn.rules.block_sparse` (BigBird), :mod:`~graphattn.rules.bpt`,
:mod:`~graphattn.rules.hashing` (Reformer LSH), :mod:`~graphattn.rules.clustering` (Routing
k-means). ``RULES`` names the rules; the helpers the content-based and block rules are made of
(``lsh_buckets``, ``spherical_kmeans``, ``bpt_levels``, ``random_key_blocks``) are exported too.
"""

from graphattn.rules.block_sparse import bigbird, bigbird_etc, random_key_blocks
from graphattn.rules.bpt import bp_transformer, bpt_levels
from graphattn.rules.clustering import kmeans, spherical_kmeans
from graphattn.rules.global_local import etc
from graphattn.rules.globals import global_nodes, global_tokens
from graphattn.rules.hashing import lsh, lsh_buckets
from graphattn.rules.position import band, block_local, dilated, full
from graphattn.rules.random_graphs import erdos_renyi, random, random_regular
from graphattn.rules.sliding_window import longformer
from graphattn.rules.star import star_transformer

#: The rules, from atomic to combined: each returns an AttentionGraph.
RULES = (
    "full", "band", "dilated", "block_local",
    "global_tokens", "global_nodes",
    "random", "erdos_renyi", "random_regular",
    "star_transformer", "longformer", "etc", "bigbird", "bigbird_etc", "bp_transformer",
    "lsh", "kmeans",
)
#: Building blocks of the rules that users call directly (bucket ids, centroids, levels).
HELPERS = ("lsh_buckets", "spherical_kmeans", "bpt_levels", "random_key_blocks")

__all__ = [*RULES, *HELPERS, "RULES", "HELPERS"]
