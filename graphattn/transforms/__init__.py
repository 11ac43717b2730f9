"""PyTorch Geometric transforms: batch-safe attention graphs and node orderings.

Attention transforms (:mod:`graphattn.transforms.attention`) store attention edges under a key
containing ``"index"`` so PyG batching offsets them per graph; orderings
(:mod:`graphattn.transforms.ordering`) renumber nodes so that sequence rules make sense on graphs.
"""

from graphattn.transforms.attention import AddAttentionGraph, AddExpanderEdges, AddLocalEdges, AddVirtualNodes
from graphattn.transforms.ordering import bfs_order, connected_components, rcm_order, spectral_order
from graphattn.transforms.permute import PermuteNodes

__all__ = [
    "AddAttentionGraph", "AddExpanderEdges", "AddLocalEdges", "AddVirtualNodes",
    "PermuteNodes", "bfs_order", "rcm_order", "spectral_order", "connected_components",
]
