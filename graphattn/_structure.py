"""Structured graphs: the rule that made a graph, kept so its edge list need not exist (internal).

A band is ``n`` rows of the same window, BigBird a small graph over blocks lifted to tokens: a
million-token band holds 270 million edges (4.3 GB as an ``int64 [2, E]`` list), BigBird twice
that, while their structures hold a few kilobytes. The rules that have such a structure (band and
causal band, dilated bands, Longformer's band with global tokens (a window plus the few edges of
the global rows and columns), everything made with :func:`graphattn.compose.lift_blocks`:
block-local, BigBird) return an :class:`~graphattn.AttentionGraph` that keeps it and builds its edge list only
when something reads the edges. Edge counts, keys per query, query slices, device moves and the
engine's tiling plan (:func:`graphattn.nn.plan.get_plan`) come from the structure directly.
"""

from __future__ import annotations

import torch

__all__ = ["Window", "WindowWithEdges", "Lifted"]


class Window:
    """Edges ``(i + o, i)`` for the sorted ``offsets`` ``o`` with ``0 <= i + o < n``, queries ``i``
    in ``[start, stop)``, one edge label (band: ``o`` in ``-r..r``; dilated: multiples of ``d``)."""

    num_heads = None

    def __init__(self, n: int, offsets: torch.Tensor, label: int, start: int, stop: int, device=None):
        self.n, self.offsets, self.label = n, offsets.cpu(), int(label)
        self.start, self.stop = start, stop
        self.device = torch.device("cpu") if device is None else torch.device(device)

    @property
    def contiguous(self) -> bool:
        """Whether the offsets are consecutive integers (a band, not a dilated band)."""
        o = self.offsets
        return o.numel() == 0 or int(o[-1] - o[0]) + 1 == o.numel()

    def counts(self) -> torch.Tensor:
        """Keys per query, ``[n]`` int64 (zero outside the query range)."""
        i = torch.arange(self.start, self.stop)
        hi = torch.searchsorted(self.offsets, self.n - 1 - i, right=True)
        lo = torch.searchsorted(self.offsets, -i)
        out = torch.zeros(self.n, dtype=torch.int64)
        out[self.start:self.stop] = hi - lo
        return out.to(self.device)

    def num_edges(self) -> int:
        # Per offset o, the queries i of [start, stop) with 0 <= i + o < n: O(offsets), not O(n).
        o = self.offsets
        lo = torch.clamp(-o, min=self.start)
        hi = torch.clamp(self.n - o, max=self.stop)
        return int((hi - lo).clamp_min(0).sum())

    def materialize(self):
        from graphattn.graph import AttentionGraph
        from graphattn.rules._build import check_edges, token_types, window_rows

        check_edges(f"the edges of a window graph (n={self.n}, {self.offsets.numel()} offsets)",
                    self.num_edges())
        ei = window_rows(self.start, self.stop, self.offsets, self.n).to(self.device)
        return AttentionGraph._trusted(ei, self.n, token_types(self.n, self.device), self.label)

    def slice(self, start: int, stop: int) -> "Window":
        a, b = max(start, self.start), min(stop, self.stop)
        return Window(self.n, self.offsets, self.label, a, max(a, b), self.device)

    def to(self, device) -> "Window":
        return Window(self.n, self.offsets, self.label, self.start, self.stop, device)

    def contains(self, key: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """bool ``[E]``: which edges ``(key, query)`` are the window's."""
        off = self.offsets.to(key.device)
        if off.numel() == 0:
            return torch.zeros(key.shape, dtype=torch.bool, device=key.device)
        d = key - query
        at = torch.searchsorted(off, d).clamp_max(off.numel() - 1)
        return (off[at] == d) & (query >= self.start) & (query < self.stop)

    def keys_before(self, key: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """int64 ``[E]``: the window's keys below ``key`` in the row of ``query`` (offsets ``o``
        with ``0 <= query + o < key``; none outside the query range)."""
        off = self.offsets.to(key.device)
        below = torch.searchsorted(off, key - query) - torch.searchsorted(off, -query)
        inside = (query >= self.start) & (query < self.stop)
        return torch.where(inside, below.clamp_min(0), torch.zeros_like(below))


class WindowWithEdges:
    """A :class:`Window` and a few ``extra`` edges outside it: Longformer's band and its global
    tokens' rows and columns (``O(n g)`` edges, kept as an AttentionGraph over the same nodes,
    disjoint from the window, its queries inside the window's query range). The graph is the
    union ``window | extra``: shared edges would keep the window's label, and there are none."""

    num_heads = None

    def __init__(self, window: Window, extra):
        self.window, self.extra = window, extra

    @property
    def n(self) -> int:
        return self.window.n

    @property
    def device(self):
        return self.window.device

    def counts(self) -> torch.Tensor:
        return self.window.counts() + torch.bincount(self.extra.edge_index[1], minlength=self.n)

    def num_edges(self) -> int:
        return self.window.num_edges() + self.extra.num_edges

    def materialize(self):
        return self.window.materialize() | self.extra

    def slice(self, start: int, stop: int) -> "WindowWithEdges":
        a, b = max(start, self.window.start), min(stop, self.window.stop)
        return WindowWithEdges(self.window.slice(start, stop), self.extra.query_slice(a, max(a, b)))

    def to(self, device) -> "WindowWithEdges":
        return WindowWithEdges(self.window.to(device), self.extra.to(device))


class Lifted:
    """Every token of query block ``I`` attends every token of key block ``J`` for each edge
    ``(J, I)`` of ``block_graph`` (blocks of ``block_size``, the last one partial), for the
    query tokens in ``[start, stop)``."""

    def __init__(self, block_graph, block_size: int, num_tokens: int, start: int, stop: int):
        self.block_graph, self.block_size, self.n = block_graph, block_size, num_tokens
        self.start, self.stop = start, stop

    @property
    def device(self):
        return self.block_graph.device

    @property
    def num_heads(self):
        return self.block_graph.num_heads

    def _block_sizes(self) -> torch.Tensor:
        nb = self.block_graph.num_nodes
        return (self.n - torch.arange(nb, device=self.device) * self.block_size).clamp_max(self.block_size)

    def counts(self) -> torch.Tensor:
        """Keys per query, ``[n]`` int64: the tokens of the key blocks of the query's block."""
        bg = self.block_graph
        per_block = torch.zeros(bg.num_nodes, dtype=torch.int64, device=self.device)
        per_block.index_add_(0, bg.edge_index[1], self._block_sizes()[bg.edge_index[0]])
        out = torch.zeros(self.n, dtype=torch.int64, device=self.device)
        tok = torch.arange(self.start, self.stop, device=self.device)
        out[self.start:self.stop] = per_block[tok // self.block_size]
        return out

    def num_edges(self) -> int:
        # Per block edge (J, I): |J| keys for each query token of block I inside [start, stop).
        bg, B = self.block_graph, self.block_size
        key, query = bg.edge_index
        lo = torch.clamp(query * B, min=self.start)
        hi = torch.clamp(torch.clamp((query + 1) * B, max=self.n), max=self.stop)
        return int(((hi - lo).clamp_min(0) * self._block_sizes()[key]).sum())

    def materialize(self):
        from graphattn.compose import _lift_edges
        from graphattn.rules._build import check_edges

        check_edges(f"the edges of a block-lifted graph (n={self.n}, block_size={self.block_size})",
                    self.num_edges())
        return _lift_edges(self.block_graph, self.block_size, self.n, self.start, self.stop)

    def slice(self, start: int, stop: int) -> "Lifted":
        a, b = max(start, self.start), min(stop, self.stop)
        return Lifted(self.block_graph, self.block_size, self.n, a, max(a, b))

    def to(self, device) -> "Lifted":
        return Lifted(self.block_graph.to(device), self.block_size, self.n, self.start, self.stop)
