"""The attention graph: one immutable value that every rule builds and every layer consumes.

Convention (the package docstring and the README's Conventions): ``edge_index[0]`` is the key / source ``j``, ``edge_index[1]``
the query / target ``i``; the edge ``(j, i)`` means "query ``i`` attends key ``j``" (PyG's default
``source_to_target`` flow, softmax grouped by ``edge_index[1]``). Edges are unique and stored sorted
by query, then key, so the query-major CSR layout is a free by-product.
"""

from __future__ import annotations

import enum

import torch

from graphattn._edge_sets import (edge_codes, exclusive_cumsum, first_occurrences, is_strictly_increasing,
                                  locate, merge_positions)
from graphattn._memory import check_memory, edge_bytes
from graphattn._validate import check_edge_index, check_int

__all__ = ["AttentionGraph", "NodeType", "EdgeLabel", "union", "intersection", "difference"]


class NodeType(enum.IntEnum):
    """What a node is. Tokens come first in every rule's numbering; extra nodes follow."""

    TOKEN = 0
    GLOBAL = 1  # ETC-style appended global node
    RELAY = 2  # Star-Transformer relay
    EMBEDDING = 3  # Star-Transformer embedding node e_i
    SPAN = 4  # BP-Transformer span node


class EdgeLabel(enum.IntEnum):
    """Which rule made an edge. Unions keep the label of their left operand on shared edges."""

    CUSTOM = 0  # edges given by the user (from_edge_index, from_dense, from_networkx)
    FULL = 1
    BAND = 2
    DILATED = 3
    BLOCK = 4
    GLOBAL = 5
    RANDOM = 6
    RING = 7
    RADICAL = 8
    AFFILIATED = 9
    CONTEXTUAL = 10
    BUCKET = 11
    CLUSTER = 12
    SELF = 13  # self-loops added by with_self_loops()


def _enum_names(enum_cls) -> dict[str, int]:
    return {m.name.lower(): int(m) for m in enum_cls}


_EDGE_SLOTS = ("edge_index", "edge_label", "relative", "head_mask")


class AttentionGraph:
    """A directed attention graph over ``num_nodes`` nodes.

    Attributes (read-only):
        edge_index: int64 ``[2, E]``; row 0 keys, row 1 queries; unique, sorted by (query, key).
        num_nodes: number of nodes, tokens first.
        node_type: int8 ``[num_nodes]`` of :class:`NodeType` values.
        edge_label: int8 ``[E]`` of :class:`EdgeLabel` values.
        relative: optional int64 ``[E]`` relative-position bucket ids (ETC), ``None`` if absent.
        head_mask: optional bool ``[E, H]``: ``head_mask[e, h]`` says edge ``e`` is used by head
            ``h`` (per-head layouts such as Longformer's per-head dilation); ``None`` means every
            edge serves every head.

    Build one with a rule from :mod:`graphattn.rules` or with :meth:`from_edge_index`,
    :meth:`from_dense`, :meth:`from_networkx`. Combine with ``|`` (union), ``&`` (intersection),
    ``-`` (difference); operands must have the same nodes (count and types), otherwise a
    ``ValueError`` says so: node ids are never silently re-aligned. Use :meth:`add_nodes` to
    append extra nodes to a graph first.

    >>> from graphattn import rules
    >>> g = rules.band(5, radius=1)
    >>> g.edge_index.tolist()
    [[0, 1, 0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4], [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]]
    >>> print(g.to_string())
    ##...
    ###..
    .###.
    ..###
    ...##
    """

    __slots__ = ("edge_index", "num_nodes", "node_type", "edge_label", "relative", "head_mask", "_cache")

    def __init__(self, *args, **kwargs):
        # One way in: every construction path validates (from_*) or is a rule that builds its
        # edges sorted and unique by construction (_trusted). A bare AttentionGraph() would be
        # an object with no edges whose every method fails.
        raise TypeError(
            "AttentionGraph is not constructed directly: use AttentionGraph.from_edge_index(edge_index, "
            "num_nodes), from_dense(mask), from_networkx(G), or a rule from graphattn.rules")

    # ------------------------------------------------------------------ construction
    @classmethod
    def _trusted(
        cls,
        edge_index: torch.Tensor,
        num_nodes: int,
        node_type: torch.Tensor | None = None,
        edge_label: torch.Tensor | int = EdgeLabel.CUSTOM,
        relative: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> "AttentionGraph":
        """Wrap tensors that are already coalesced (unique, sorted by query then key). Internal."""
        self = object.__new__(cls)
        device = edge_index.device
        if node_type is None:
            node_type = torch.zeros(num_nodes, dtype=torch.int8, device=device)
        if not isinstance(edge_label, torch.Tensor):
            edge_label = torch.full((edge_index.shape[1],), int(edge_label), dtype=torch.int8, device=device)
        object.__setattr__(self, "edge_index", edge_index)
        object.__setattr__(self, "num_nodes", int(num_nodes))
        object.__setattr__(self, "node_type", node_type.to(torch.int8))
        object.__setattr__(self, "edge_label", edge_label.to(torch.int8))
        object.__setattr__(self, "relative", relative)
        object.__setattr__(self, "head_mask", head_mask)
        object.__setattr__(self, "_cache", {})
        return self

    @classmethod
    def _implicit(cls, num_nodes: int, node_type: torch.Tensor, structure) -> "AttentionGraph":
        """A graph known by its structure (:mod:`graphattn._structure`): the edge arrays are built
        on first read; counts, slices, moves and tiling plans come from the structure. Internal."""
        self = object.__new__(cls)
        object.__setattr__(self, "num_nodes", int(num_nodes))
        object.__setattr__(self, "node_type", node_type.to(torch.int8))
        object.__setattr__(self, "_cache", {"structure": structure})
        return self

    def __getattr__(self, name):
        # Called only for an unset slot: the edge arrays of a structured graph, built on first read.
        if name in _EDGE_SLOTS:
            structure = object.__getattribute__(self, "_cache").get("structure")
            if structure is not None:
                g = structure.materialize()
                for slot in _EDGE_SLOTS:
                    object.__setattr__(self, slot, object.__getattribute__(g, slot))
                return object.__getattribute__(self, name)
        raise AttributeError(f"'AttentionGraph' object has no attribute {name!r}")

    @property
    def structure(self):
        """The structure this graph was built from while its edge list is not built (band,
        dilated, lifted block graphs), else None: what :func:`graphattn.nn.plan.get_plan` plans
        from without the edges."""
        try:
            object.__getattribute__(self, "edge_index")
            return None
        except AttributeError:
            return self._cache.get("structure")

    def __setattr__(self, name, value):
        raise AttributeError("AttentionGraph is immutable; build a new graph instead")

    @classmethod
    def from_edge_index(
        cls,
        edge_index,
        num_nodes: int,
        *,
        node_type=None,
        edge_label=None,
        relative=None,
        head_mask=None,
    ) -> "AttentionGraph":
        """Validate and coalesce a ``[2, E]`` edge list (row 0 key, row 1 query).

        Duplicate edges are merged: the first occurrence's label and relative position are kept,
        head masks are OR-ed. Raises ``ValueError``/``TypeError`` on a bad shape, dtype or range.
        """
        edge_index, num_nodes = check_edge_index(edge_index, num_nodes)
        num_edges = edge_index.shape[1]
        device = edge_index.device
        node_type = cls._check_node_type(node_type, num_nodes, device)
        if edge_label is None:
            edge_label = torch.full((num_edges,), int(EdgeLabel.CUSTOM), dtype=torch.int8, device=device)
        else:
            edge_label = cls._check_edge_tensor("edge_label", edge_label, num_edges, device)
            if edge_label.numel() and (int(edge_label.min()) < 0 or int(edge_label.max()) > max(EdgeLabel)):
                raise ValueError(f"expected edge_label values in [0, {int(max(EdgeLabel))}] (EdgeLabel)")
            edge_label = edge_label.to(torch.int8)
        if relative is not None:
            relative = cls._check_edge_tensor("relative", relative, num_edges, device).to(torch.int64)
            if relative.numel() and int(relative.min()) < 0:
                raise ValueError(f"expected relative position ids >= 0, got {int(relative.min())}")
        if head_mask is not None:
            if not isinstance(head_mask, torch.Tensor) or head_mask.dtype != torch.bool:
                raise TypeError("expected head_mask to be a bool tensor of shape [E, H]")
            if head_mask.dim() != 2 or head_mask.shape[0] != num_edges or head_mask.shape[1] < 1:
                raise ValueError(f"expected head_mask of shape [{num_edges}, H], got {list(head_mask.shape)}")
            head_mask = head_mask.to(device)
        # Coalesce: sort by (query, key) and drop duplicates, keeping the first occurrence.
        code = edge_codes(edge_index, num_nodes)
        if not is_strictly_increasing(code):
            order, first, group = first_occurrences(code)
            keep = order[first]
            if head_mask is not None:
                hm = head_mask[order].to(torch.uint8)
                merged = torch.zeros(int(first.sum()), hm.shape[1], dtype=torch.uint8, device=device)
                merged.scatter_reduce_(0, group[:, None].expand_as(hm), hm, "amax")
                head_mask = merged.bool()
            edge_index = edge_index[:, keep]
            edge_label = edge_label[keep]
            relative = relative[keep] if relative is not None else None
        else:
            edge_index = edge_index.clone()
        return cls._trusted(edge_index, num_nodes, node_type, edge_label, relative, head_mask)

    @staticmethod
    def _check_node_type(node_type, num_nodes: int, device) -> torch.Tensor:
        if node_type is None:
            return torch.zeros(num_nodes, dtype=torch.int8, device=device)
        if not isinstance(node_type, torch.Tensor):
            node_type = torch.tensor([int(NodeType(t)) for t in node_type], dtype=torch.int8)
        if node_type.dtype.is_floating_point or node_type.dim() != 1 or node_type.shape[0] != num_nodes:
            raise ValueError(f"expected node_type as an integer tensor of shape [{num_nodes}], got {node_type!r}")
        if node_type.numel() and (int(node_type.min()) < 0 or int(node_type.max()) > max(NodeType)):
            raise ValueError(f"expected node_type values in [0, {int(max(NodeType))}] (NodeType)")
        return node_type.to(device, torch.int8)

    @staticmethod
    def _check_edge_tensor(name, values, num_edges, device) -> torch.Tensor:
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"expected {name} to be a tensor of shape [{num_edges}], got {type(values).__name__}")
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise TypeError(f"expected {name} to hold integers, got dtype {values.dtype}")
        if values.shape != (num_edges,):
            raise ValueError(f"expected {name} of shape [{num_edges}], got {list(values.shape)}")
        return values.to(device)

    @classmethod
    def from_dense(cls, mask, *, node_type=None) -> "AttentionGraph":
        """Build from a bool ``[N, N]`` mask with ``mask[i, j]`` = query ``i`` attends key ``j``."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"expected mask to be a bool tensor, got {type(mask).__name__}"
                            + (f" of dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else ""))
        if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"expected a square mask of shape [N, N], got {list(mask.shape)}")
        query, key = mask.nonzero(as_tuple=True)  # row-major: already sorted by (query, key)
        node_type = cls._check_node_type(node_type, mask.shape[0], mask.device)
        return cls._trusted(torch.stack([key, query]), mask.shape[0], node_type)

    @classmethod
    def from_networkx(cls, G) -> "AttentionGraph":
        """Build from a networkx graph; an edge ``(u, v)`` means query ``v`` attends key ``u``.

        Nodes are numbered in ``G.nodes`` order (as PyG's ``from_networkx`` does). An undirected
        graph gives both directions. Node attribute ``type`` (a :class:`NodeType` name) and edge
        attributes ``label`` (an :class:`EdgeLabel` name) and ``relative`` are read when present,
        so ``from_networkx(g.to_networkx())`` round-trips.
        """
        import networkx as nx

        if not isinstance(G, nx.Graph):
            raise TypeError(f"expected a networkx graph, got {type(G).__name__}")
        index = {v: p for p, v in enumerate(G.nodes)}
        types, labels = _enum_names(NodeType), _enum_names(EdgeLabel)
        node_type = []
        for v, data in G.nodes(data=True):
            name = data.get("type", "token")
            if name not in types:
                raise ValueError(f"expected node attribute type in {sorted(types)}, got {name!r} on node {v!r}")
            node_type.append(types[name])
        pairs, lab, rel = [], [], []
        directed = G.is_directed()
        for u, v, data in G.edges(data=True):
            name = data.get("label", "custom")
            if name not in labels:
                raise ValueError(f"expected edge attribute label in {sorted(labels)}, got {name!r}")
            both = [(index[u], index[v])] if directed else [(index[u], index[v]), (index[v], index[u])]
            for p in both:
                pairs.append(p)
                lab.append(labels[name])
                rel.append(data.get("relative"))
        edge_index = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).t()
        has_rel = [r is not None for r in rel]
        if any(has_rel) and not all(has_rel):
            raise ValueError("expected edge attribute relative on every edge or on none")
        return cls.from_edge_index(
            edge_index,
            len(index),
            node_type=torch.tensor(node_type, dtype=torch.int8),
            edge_label=torch.tensor(lab, dtype=torch.int8),
            relative=torch.tensor(rel, dtype=torch.int64) if rel and all(has_rel) else None,
        )

    # ------------------------------------------------------------------ basic properties
    @property
    def num_edges(self) -> int:
        structure = self.structure
        if structure is not None:
            if "num_edges" not in self._cache:
                self._cache["num_edges"] = structure.num_edges()
            return self._cache["num_edges"]
        return self.edge_index.shape[1]

    @property
    def num_tokens(self) -> int:
        """Number of token nodes (they come first in every rule's numbering)."""
        if "num_tokens" not in self._cache:
            self._cache["num_tokens"] = int((self.node_type == NodeType.TOKEN).sum())
        return self._cache["num_tokens"]

    @property
    def num_heads(self) -> int | None:
        """Heads of a per-head layout, or ``None`` when every edge serves every head."""
        structure = self.structure
        if structure is not None:
            return structure.num_heads
        return None if self.head_mask is None else self.head_mask.shape[1]

    @property
    def device(self) -> torch.device:
        return self.node_type.device

    @property
    def keys(self) -> torch.Tensor:
        return self.edge_index[0]

    @property
    def queries(self) -> torch.Tensor:
        return self.edge_index[1]

    @property
    def query_ptr(self) -> torch.Tensor:
        """CSR row pointer over queries, ``[num_nodes + 1]``: query ``i`` owns edges ``ptr[i]:ptr[i+1]``."""
        if "query_ptr" not in self._cache:
            structure = self.structure
            counts = (structure.counts() if structure is not None
                      else torch.bincount(self.edge_index[1], minlength=self.num_nodes))
            self._cache["query_ptr"] = exclusive_cumsum(counts)
        return self._cache["query_ptr"]

    def keys_per_query(self) -> torch.Tensor:
        """In-degree of every node as a query: ``[num_nodes]`` int64."""
        return self.query_ptr.diff()

    def density(self) -> float:
        return self.num_edges / self.num_nodes**2 if self.num_nodes else 0.0

    def equals(self, other: "AttentionGraph") -> bool:
        """Same nodes, edges, labels, relative positions and head layout."""
        if not isinstance(other, AttentionGraph) or self.num_nodes != other.num_nodes:
            return False
        if self.edge_index.shape != other.edge_index.shape:
            return False
        same = (
            torch.equal(self.edge_index, other.edge_index.to(self.device))
            and torch.equal(self.node_type, other.node_type.to(self.device))
            and torch.equal(self.edge_label, other.edge_label.to(self.device))
        )
        for a, b in ((self.relative, other.relative), (self.head_mask, other.head_mask)):
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b.to(a.device))):
                return False
        return same

    # ------------------------------------------------------------------ conversions
    def to(self, device) -> "AttentionGraph":
        """A copy on ``device`` (the tiling plans cached on this graph are not carried over)."""
        structure = self.structure
        if structure is not None:
            return AttentionGraph._implicit(self.num_nodes, self.node_type.to(device), structure.to(device))
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return AttentionGraph._trusted(
            self.edge_index.to(device), self.num_nodes, self.node_type.to(device),
            self.edge_label.to(device), mv(self.relative), mv(self.head_mask),
        )

    def to_dense(self) -> torch.Tensor:
        """Bool ``[N, N]`` mask, ``mask[i, j]`` = query ``i`` attends key ``j`` (SDPA's ``attn_mask``)."""
        mask = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool, device=self.device)
        mask[self.edge_index[1], self.edge_index[0]] = True
        return mask

    def to_networkx(self):
        """``nx.DiGraph`` with edge ``(key, query)``; node attribute ``type``, edge ``label``
        (and ``relative`` / ``heads`` when the graph carries them) as names and Python ints."""
        import networkx as nx

        G = nx.DiGraph()
        type_names = {int(t): t.name.lower() for t in NodeType}
        label_names = {int(t): t.name.lower() for t in EdgeLabel}
        G.add_nodes_from((v, {"type": type_names[t]}) for v, t in enumerate(self.node_type.tolist()))
        src, dst = self.edge_index.tolist()
        attrs = [{"label": label_names[t]} for t in self.edge_label.tolist()]
        if self.relative is not None:
            for a, r in zip(attrs, self.relative.tolist()):
                a["relative"] = r
        if self.head_mask is not None:
            for a, row in zip(attrs, self.head_mask.tolist()):
                a["heads"] = tuple(h for h, on in enumerate(row) if on)
        G.add_edges_from(zip(src, dst, attrs))
        return G

    def to_pyg(self):
        """``torch_geometric.data.Data`` with ``edge_index``, ``num_nodes``, ``node_type``,
        ``edge_label`` and, when present, ``edge_relative`` and ``edge_head_mask``."""
        from torch_geometric.data import Data

        data = Data(edge_index=self.edge_index, num_nodes=self.num_nodes,
                    node_type=self.node_type, edge_label=self.edge_label)
        if self.relative is not None:
            data.edge_relative = self.relative
        if self.head_mask is not None:
            data.edge_head_mask = self.head_mask
        return data

    def to_edge_index(self):
        """PyG ``EdgeIndex`` sorted by column (our query row), sizes ``(N, N)``; cached."""
        if "pyg_edge_index" not in self._cache:
            from torch_geometric import EdgeIndex

            self._cache["pyg_edge_index"] = EdgeIndex(
                self.edge_index, sparse_size=(self.num_nodes, self.num_nodes), sort_order="col"
            )
        return self._cache["pyg_edge_index"]

    # ------------------------------------------------------------------ derived graphs
    def _select(self, keep: torch.Tensor) -> "AttentionGraph":
        """Subgraph of the edges where bool ``keep`` is true (order, hence sortedness, preserved)."""
        pick = lambda t: None if t is None else t[keep]  # noqa: E731
        return AttentionGraph._trusted(
            self.edge_index[:, keep], self.num_nodes, self.node_type,
            self.edge_label[keep], pick(self.relative), pick(self.head_mask),
        )

    def query_slice(self, start: int, stop: int) -> "AttentionGraph":
        """The edges whose query lies in ``[start, stop)``; nodes unchanged (a shard's view)."""
        start = check_int("start", start, minimum=0, maximum=self.num_nodes)
        stop = check_int("stop", stop, minimum=start, maximum=self.num_nodes)
        structure = self.structure
        if structure is not None:
            return AttentionGraph._implicit(self.num_nodes, self.node_type, structure.slice(start, stop))
        lo, hi = int(self.query_ptr[start]), int(self.query_ptr[stop])
        keep = torch.zeros(self.num_edges, dtype=torch.bool, device=self.device)
        keep[lo:hi] = True
        return self._select(keep)

    def causal(self) -> "AttentionGraph":
        """Keep ``key <= query`` among token-token edges; edges touching extra nodes are kept."""
        key, query = self.edge_index
        is_tok = self.node_type == NodeType.TOKEN
        keep = (key <= query) | ~(is_tok[key] & is_tok[query])
        return self._select(keep)

    def without_self_loops(self) -> "AttentionGraph":
        return self._select(self.edge_index[0] != self.edge_index[1])

    def with_self_loops(self) -> "AttentionGraph":
        """Add the self-loop of every node that lacks one (label ``SELF``)."""
        loops = torch.arange(self.num_nodes, device=self.device)
        other = AttentionGraph._trusted(torch.stack([loops, loops]), self.num_nodes, self.node_type,
                                        EdgeLabel.SELF,
                                        None if self.relative is None else torch.zeros_like(loops))
        return union(self, other)

    def select_labels(self, *labels: EdgeLabel) -> "AttentionGraph":
        """The edges made by the given rules, e.g. ``g.select_labels(EdgeLabel.RING)``."""
        wanted = torch.tensor([int(EdgeLabel(x)) for x in labels], dtype=torch.int8, device=self.device)
        return self._select(torch.isin(self.edge_label, wanted))

    def without_relative(self) -> "AttentionGraph":
        return AttentionGraph._trusted(self.edge_index, self.num_nodes, self.node_type,
                                       self.edge_label, None, self.head_mask)

    def add_nodes(self, count: int, *, node_type: NodeType) -> "AttentionGraph":
        """Append ``count`` isolated nodes of ``node_type`` after the existing nodes."""
        count = check_int("count", count, minimum=0)
        extra = torch.full((count,), int(NodeType(node_type)), dtype=torch.int8, device=self.device)
        return AttentionGraph._trusted(self.edge_index, self.num_nodes + count,
                                       torch.cat([self.node_type, extra]), self.edge_label,
                                       self.relative, self.head_mask)

    # ------------------------------------------------------------------ operators
    def __or__(self, other: "AttentionGraph") -> "AttentionGraph":
        return union(self, other)

    def __and__(self, other: "AttentionGraph") -> "AttentionGraph":
        return intersection(self, other)

    def __sub__(self, other: "AttentionGraph") -> "AttentionGraph":
        return difference(self, other)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        deg = self.keys_per_query()
        queries = deg[deg > 0]
        mean = float(queries.double().mean()) if queries.numel() else 0.0
        mx = int(queries.max()) if queries.numel() else 0
        extra = f", heads={self.num_heads}" if self.num_heads is not None else ""
        extra += ", relative" if self.structure is None and self.relative is not None else ""
        return (f"AttentionGraph(num_nodes={self.num_nodes}, num_tokens={self.num_tokens}, "
                f"num_edges={self.num_edges}, keys_per_query(mean={mean:.2f}, max={mx}), "
                f"density={self.density():.4f}{extra})")

    def to_string(self, *, max_nodes: int = 64) -> str:
        """ASCII grid: row ``i`` is a query, column ``j`` a key, ``#`` where ``i`` attends ``j``.

        Only the first ``max_nodes`` nodes are drawn; a trailing line says when more exist.
        """
        max_nodes = check_int("max_nodes", max_nodes, minimum=1)
        m = min(self.num_nodes, max_nodes)
        key, query = self.edge_index
        keep = (key < m) & (query < m)
        grid = torch.zeros(m, m, dtype=torch.bool)
        grid[query[keep].cpu(), key[keep].cpu()] = True
        lines = ["".join("#" if c else "." for c in row) for row in grid.tolist()]
        if m < self.num_nodes:
            lines.append(f"... first {m} of {self.num_nodes} nodes")
        return "\n".join(lines)



# ---------------------------------------------------------------------- set algebra
# The operators of the type live with the type; graphattn.compose re-exports them as functions.
def _as_graphs(graphs, name: str = "graphs") -> list[AttentionGraph]:
    out = list(graphs)
    for p, g in enumerate(out):
        if not isinstance(g, AttentionGraph):
            raise TypeError(f"expected {name}[{p}] to be an AttentionGraph, got {type(g).__name__}")
    return out


def _check_same_nodes(a: AttentionGraph, b: AttentionGraph, op: str) -> None:
    if a.num_nodes != b.num_nodes:
        raise ValueError(
            f"{op}: expected graphs over the same nodes, got num_nodes {a.num_nodes} and {b.num_nodes} "
            "(append nodes with add_nodes() first)"
        )
    if a.device != b.device:
        raise ValueError(f"{op}: expected graphs on one device, got {a.device} and {b.device}")
    if a.node_type is not b.node_type and not torch.equal(a.node_type, b.node_type):
        raise ValueError(f"{op}: expected graphs with the same node types, got different node_type")
    if a.num_heads is not None and b.num_heads is not None and a.num_heads != b.num_heads:
        raise ValueError(f"{op}: expected the same number of heads, got {a.num_heads} and {b.num_heads}")
    if (a.relative is None) != (b.relative is None):
        raise ValueError(
            f"{op}: one graph carries relative positions and the other does not; "
            "drop them with without_relative() or give both"
        )


def _codes(g: AttentionGraph) -> torch.Tensor:
    return edge_codes(g.edge_index, g.num_nodes)


def _heads(g: AttentionGraph, num_heads: int | None) -> torch.Tensor | None:
    if num_heads is None:
        return None
    if g.head_mask is not None:
        return g.head_mask
    return torch.ones(g.num_edges, num_heads, dtype=torch.bool, device=g.device)


def _union_of_rest(gs: list[AttentionGraph], heads: int | None):
    """Coalesced union of ``gs`` as ``(codes, edge_index, label, relative, head_mask, source)``,
    ``source`` the earliest operand that holds each edge (its attributes win)."""
    if len(gs) == 1:
        g = gs[0]
        return (_codes(g), g.edge_index, g.edge_label, g.relative, _heads(g, heads),
                torch.zeros(g.num_edges, dtype=torch.int64, device=g.device))
    codes = torch.cat([_codes(g) for g in gs])
    source = torch.cat([torch.full((g.num_edges,), p, dtype=torch.int64, device=g.device) for p, g in enumerate(gs)])
    order, first, group = first_occurrences(codes)  # stable: the earliest operand comes first
    keep = order[first]
    edge_index = torch.cat([g.edge_index for g in gs], dim=1)[:, keep]
    label = torch.cat([g.edge_label for g in gs])[keep]
    relative = None if gs[0].relative is None else torch.cat([g.relative for g in gs])[keep]
    head_mask = None
    if heads is not None:
        hm = torch.cat([_heads(g, heads) for g in gs])[order].to(torch.uint8)
        merged = torch.zeros(keep.numel(), heads, dtype=torch.uint8, device=hm.device)
        head_mask = merged.scatter_reduce_(0, group[:, None].expand_as(hm), hm, "amax").bool()
    return codes[keep], edge_index, label, relative, head_mask, source[keep]


def union(*graphs: AttentionGraph) -> AttentionGraph:
    """Edges in any operand. Labels (and relative ids) of earlier operands win on shared edges;
    head masks are OR-ed. ``g | h`` is ``union(g, h)``.

    One merge for any number of operands: the largest operand is the base, the others are
    coalesced together and merged into it by computed output positions, so the base (a rule's
    whole edge list, typically) is copied once and never sorted or searched.
    """
    gs = _as_graphs(graphs)
    if not gs:
        raise ValueError("union: expected at least one graph, got none")
    for g in gs[1:]:
        _check_same_nodes(gs[0], g, "union")
    if len(gs) == 1:
        return gs[0]
    heads = next((g.num_heads for g in gs if g.num_heads is not None), None)
    total = sum(g.num_edges for g in gs)
    # the merged edge list, labels, relative ids and head masks, plus codes and positions
    check_memory(f"union of {len(gs)} graphs: up to {total:,} edges",
                 edge_bytes(total) + total * (16 + 8 * (gs[0].relative is not None) + (heads or 0)))
    b = max(range(len(gs)), key=lambda p: gs[p].num_edges)
    base = gs[b]
    rest = gs[:b] + gs[b + 1:]
    codes, r_edges, r_label, r_rel, r_heads, r_source = _union_of_rest(rest, heads)
    r_source = torch.where(r_source >= b, r_source + 1, r_source)  # operand ids in the full list
    found, pos = locate(_codes(base), codes)
    label, relative, head_mask = base.edge_label, base.relative, _heads(base, heads)
    earlier = found & (r_source < b)  # shared edges whose label comes from an operand before the base
    if bool(earlier.any()):
        at = pos[earlier]
        label = label.clone()
        label[at] = r_label[earlier]
        if relative is not None:
            relative = relative.clone()
            relative[at] = r_rel[earlier]
    if head_mask is not None and bool(found.any()):
        head_mask = head_mask.clone()
        head_mask[pos[found]] |= r_heads[found]  # shared edges serve the heads of every operand
    new = ~found
    base_pos, new_pos = merge_positions(_codes(base), codes[new])
    total = base.num_edges + new_pos.numel()

    def merge(x_base, x_new):
        out = x_base.new_empty((total, *x_base.shape[1:]))
        out[base_pos] = x_base
        out[new_pos] = x_new[new]
        return out

    edge_index = base.edge_index.new_empty(2, total)
    edge_index[:, base_pos] = base.edge_index
    edge_index[:, new_pos] = r_edges[:, new]
    return AttentionGraph._trusted(
        edge_index, base.num_nodes, base.node_type, merge(label, r_label),
        None if relative is None else merge(relative, r_rel),
        None if head_mask is None else merge(head_mask, r_heads))


def intersection(a: AttentionGraph, b: AttentionGraph) -> AttentionGraph:
    """Edges in both (labels from ``a``; head masks AND-ed, edges left with no head dropped)."""
    return _filter_by(a, b, "intersection", keep_found=True)


def difference(a: AttentionGraph, b: AttentionGraph) -> AttentionGraph:
    """Edges of ``a`` not in ``b`` (per head when either graph has a head layout)."""
    return _filter_by(a, b, "difference", keep_found=False)


def _filter_by(a, b, what: str, keep_found: bool) -> AttentionGraph:
    """``a``'s edges (per head) that are in ``b`` (``keep_found``) or not in ``b``."""
    a, b = _as_graphs((a, b))
    _check_same_nodes(a, b, what)
    found, pos = locate(_codes(b), _codes(a))
    heads = a.num_heads or b.num_heads
    if heads is None:
        return a._select(found if keep_found else ~found)
    in_b = _heads(b, heads)[pos] & found[:, None]
    mask = _heads(a, heads) & (in_b if keep_found else ~in_b)
    keep = mask.any(dim=1)
    g = a._select(keep)
    return AttentionGraph._trusted(g.edge_index, g.num_nodes, g.node_type, g.edge_label, g.relative, mask[keep])
