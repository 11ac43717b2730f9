"""Edge-construction rules: every sparse-attention variant of ``shared/CATALOG.md`` as a pure
function returning an :class:`~graphattn.graph.AttentionGraph`.

Position-based rules take ``n`` then keyword-only parameters, and a ``queries=range(a, b)``
argument that builds only the rows of that query range, identical to that slice of the full
graph (the sharding hook). Content-based rules (``lsh``, ``kmeans``) take the vectors first.
"""

from graphattn.rules.bigbird import bigbird, bigbird_etc
from graphattn.rules.bpt import bp_transformer
from graphattn.rules.etc import etc
from graphattn.rules.globals import global_nodes, global_tokens
from graphattn.rules.kmeans import kmeans
from graphattn.rules.longformer import longformer
from graphattn.rules.lsh import lsh
from graphattn.rules.position import band, block_local, dilated, full
from graphattn.rules.random import erdos_renyi, random, random_regular
from graphattn.rules.star import star_transformer

__all__ = [
    "full", "band", "dilated", "block_local",
    "global_tokens", "global_nodes",
    "random", "erdos_renyi", "random_regular",
    "star_transformer", "longformer", "etc", "bigbird", "bigbird_etc", "bp_transformer",
    "lsh", "kmeans",
]
