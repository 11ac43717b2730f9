"""One layer's attention graphs: built for each input length, checked once, cached (internal)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from graphattn.graph import AttentionGraph
from graphattn.models._ragged import LengthCache, batched_graph

__all__ = ["LayerGraphs", "check_source"]


def check_source(source, name: str):
    """A layer's graph source: an :class:`AttentionGraph` or a callable ``n -> AttentionGraph``."""
    if isinstance(source, AttentionGraph) or callable(source):
        return source
    raise TypeError(f"expected {name} to be an AttentionGraph or a callable n -> AttentionGraph "
                    f"(a rule such as functools.partial(rules.band, radius=128)), got {type(source).__name__}")


def _empty(n: int) -> AttentionGraph:
    return AttentionGraph._trusted(torch.zeros(2, 0, dtype=torch.int64), n)


class LayerGraphs:
    """The graphs of the sparsified attention layers that share one graph source.

    ``source`` is a fixed :class:`AttentionGraph` (the input must have exactly its node count) or
    a callable ``n -> AttentionGraph``, called once per length and cached (per device). Every
    graph is checked when it is first built: an AttentionGraph over exactly the ``n`` tokens (no
    extra nodes: a pretrained model has no states for them) and, on causal layers, causal. Layers
    that share a source share its graphs (and their cached tiling plans). The ``cache_size`` most
    recently used lengths are kept: a graph over thousands of tokens holds millions of edges.
    """

    def __init__(self, source, *, layers, causal: bool, cache_size: int = 8):
        self.layers = tuple(layers)
        self.causal = causal
        self.source = check_source(source, f"the graph of {self.where}")
        self._cpu = LengthCache(self._make, size=cache_size)
        self._on_device: dict[str, LengthCache] = {}
        self._batched: dict = OrderedDict()
        if isinstance(source, AttentionGraph):
            self._check(source, source.num_nodes)

    @property
    def where(self) -> str:
        """``layer 3`` or ``layers 0, 1, 2``: the layers named in error messages."""
        return (f"layer {self.layers[0]}" if len(self.layers) == 1
                else "layers " + ", ".join(map(str, self.layers)))

    def __repr__(self) -> str:
        return f"LayerGraphs(layers={self.layers}, causal={self.causal}, source={self.source!r})"

    def _check(self, g, n: int) -> AttentionGraph:
        where = self.where
        if not isinstance(g, AttentionGraph):
            raise TypeError(f"expected the graph rule of {where} to return an AttentionGraph, got {type(g).__name__}")
        if g.num_tokens != g.num_nodes:
            raise ValueError(
                f"{where}: expected a graph over the tokens only, got {g.num_nodes - g.num_tokens} extra nodes "
                f"(global, relay or span nodes): a pretrained model has no states for extra nodes; use global "
                f"tokens instead (rules.global_tokens, longformer(global_indices=...), bigbird)")
        if g.num_nodes != n:
            raise ValueError(f"{where}: expected a graph over the sequence's {n} tokens, got a graph over "
                             f"{g.num_nodes} nodes")
        if self.causal and g.num_edges and not bool((g.edge_index[0] <= g.edge_index[1]).all()):
            raise ValueError(f"{where}: the model is causal but its graph is not: some query attends a later "
                             f"key (use a causal graph, e.g. graph.causal() or rules.band(n, radius=r, causal=True))")
        return g

    def _make(self, n: int) -> AttentionGraph:
        if isinstance(self.source, AttentionGraph):
            return self._check(self.source, n)
        if n == 0:  # an all-padding sample: no rule is asked for a graph over no tokens
            return _empty(0)
        return self._check(self.source(n), n)

    def graph(self, n: int, device) -> AttentionGraph:
        """The graph over ``n`` tokens on ``device`` (built once per length and device)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self._cpu(n)
        cache = self._on_device.get(str(device))
        if cache is None:
            cache = self._on_device[str(device)] = LengthCache(lambda m: self._cpu(m).to(device))
        return cache(n)

    def batched(self, lengths: torch.Tensor, device) -> AttentionGraph:
        """The disjoint union of the graphs of ``lengths`` (one per sample), on ``device``."""
        return batched_graph(self._cpu, lengths, device, self._batched)[0]
