"""Shared helpers of :mod:`graphattn.analysis` (internal): argument checks and scipy views.

Every analysis reads an :class:`~graphattn.AttentionGraph` as a directed graph in which
information flows along an edge from the key to the query: the edge ``(j, i)`` (query ``i``
attends key ``j``) lets token ``j`` influence token ``i`` in one layer. The scipy matrices built
here follow scipy's ``csgraph`` convention, ``A[u, v] != 0`` for an arc ``u -> v``, so
``A[key, query]`` is set: a forward BFS from ``u`` finds the nodes ``u`` influences.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from graphattn.graph import AttentionGraph, NodeType

__all__ = ["check_graph", "check_schedule", "token_index", "flow_matrix", "edges_numpy"]


def check_graph(name: str, g) -> AttentionGraph:
    if not isinstance(g, AttentionGraph):
        raise TypeError(f"expected {name} to be an AttentionGraph, got {type(g).__name__}")
    return g


def check_schedule(name: str, graphs) -> tuple[AttentionGraph, ...]:
    """A single graph or a non-empty list/tuple of graphs over the same nodes."""
    if isinstance(graphs, AttentionGraph):
        return (graphs,)
    if not isinstance(graphs, (list, tuple)):
        raise TypeError(
            f"expected {name} to be an AttentionGraph or a list/tuple of them, got {type(graphs).__name__}")
    if not graphs:
        raise ValueError(f"expected {name} to hold at least one graph, got an empty {type(graphs).__name__}")
    for p, g in enumerate(graphs):
        check_graph(f"{name}[{p}]", g)
    first = graphs[0]
    for p, g in enumerate(graphs[1:], start=1):
        if g.num_nodes != first.num_nodes or not torch.equal(g.node_type.cpu(), first.node_type.cpu()):
            raise ValueError(
                f"expected every layer of {name} over the same nodes, {name}[{p}] has "
                f"{g.num_nodes} nodes / node types differing from {name}[0] ({first.num_nodes} nodes)")
    return tuple(graphs)


def token_index(g: AttentionGraph) -> np.ndarray:
    """Node ids of the tokens, increasing (int64 numpy)."""
    return (g.node_type == NodeType.TOKEN).nonzero().flatten().cpu().numpy().astype(np.int64)


def edges_numpy(g: AttentionGraph) -> tuple[np.ndarray, np.ndarray]:
    """``(key, query)`` as int64 numpy arrays, in the graph's (query, key) order."""
    ei = g.edge_index.cpu().numpy()
    return ei[0].astype(np.int64, copy=False), ei[1].astype(np.int64, copy=False)


def flow_matrix(g: AttentionGraph, *, self_loops: bool = True, dtype=np.int8) -> sp.csr_matrix:
    """``[N, N]`` CSR with ``A[key, query] = 1``: arcs in the direction information flows."""
    key, query = edges_numpy(g)
    if not self_loops:
        keep = key != query
        key, query = key[keep], query[keep]
    n = g.num_nodes
    return sp.csr_matrix((np.ones(key.size, dtype=dtype), (key, query)), shape=(n, n))
