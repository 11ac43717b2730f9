"""graphattn: every sparse-attention variant is a graph.

Build attention graphs with :mod:`graphattn.rules`, combine them with :mod:`graphattn.compose`
(or the ``|``, ``&``, ``-`` operators), run exact attention over them with :mod:`graphattn.nn`,
and convert them to dense masks, networkx or PyG.

Conventions (the same everywhere in the package):

- **Edges.** ``edge_index`` is ``[2, E]`` int64: row 0 is the key / source ``j``, row 1 the
  query / target ``i``; the edge ``(j, i)`` means "query ``i`` attends key ``j``" (PyG's
  ``source_to_target`` flow: the softmax runs per query, over ``edge_index[1]``). An
  :class:`AttentionGraph`'s edges are unique and sorted by (query, key).
- **Dense masks.** ``g.to_dense()[i, j]`` is true when query ``i`` attends key ``j``: the bool
  ``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention``.
- **Nodes.** Tokens are nodes ``0 .. n-1``; extra nodes (ETC and BigBird-ETC global nodes, the
  Star relay and embedding nodes, BP-Transformer span nodes) follow them, typed by
  ``g.node_type`` (:class:`NodeType`); ``g.edge_label`` (:class:`EdgeLabel`) names the rule that
  made each edge.
- **Radius.** ``radius=r`` is one-sided: ``2r + 1`` keys per query away from the borders
  (``r + 1`` when causal). No rule takes an ambiguous "window size".
- **Self-loops.** Every token attends itself unless a rule says otherwise (Reformer LSH).
- **Seeds.** Randomness only through a ``seed`` argument: an int (the same graph on every device
  and run), a ``torch.Generator``, or None for torch's default generator. Nothing here seeds
  torch's global generator.
- **Attention.** Scores are ``q_i . k_j / sqrt(D)`` by default (``scale=``), plus an optional
  per-edge bias; the softmax runs over each query's edges only; a query without keys gets zeros.
"""

from graphattn import compose, rules
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType

__version__ = "0.1.0"

__all__ = ["AttentionGraph", "EdgeLabel", "NodeType", "compose", "rules", "__version__"]
