"""graphattn: every sparse-attention variant is a graph.

Build attention graphs with :mod:`graphattn.rules`, combine them with :mod:`graphattn.compose`
(or the ``|``, ``&``, ``-`` operators), and convert them to dense masks, networkx or PyG.
"""

from graphattn import compose, rules
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType

__version__ = "0.1.0"

__all__ = ["AttentionGraph", "EdgeLabel", "NodeType", "compose", "rules", "__version__"]
