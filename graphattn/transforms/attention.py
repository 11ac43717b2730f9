"""PyG transforms that attach attention graphs to ``Data`` objects, batch-safe.

The attention edges of a graph are stored as a ``[2, E]`` tensor under a key containing
``"index"`` (default ``attn_edge_index``), in graphattn's convention (row 0 key ``j``, row 1
query ``i``: query ``i`` attends key ``j``; PyG's ``source_to_target`` flow). PyG batches such keys
like ``edge_index`` (``Data.__cat_dim__`` is -1, ``Data.__inc__`` is the graph's ``num_nodes``), so
in a batch every graph's attention edges are offset into its own node range: the batched
attention graph is block diagonal and attention never crosses graphs, and
``Batch.to_data_list()`` restores each graph's edges. Edge labels (:class:`~graphattn.EdgeLabel`
values, int64) go under the matching key with ``"index"`` replaced by ``"label"`` (default
``attn_edge_label``), which PyG concatenates without offsets.

Transforms that write to the same key merge their edges (set union; the labels of edges already
present win), so an Exphormer attention graph (Shirzad et al., 2023) is a composition::

    T.Compose([AddLocalEdges(), AddExpanderEdges(4, seed=0), AddVirtualNodes(1)])

Apply :class:`AddVirtualNodes` last: the transforms before it see only the real nodes. Every
transform returns a new ``Data`` (PyG's ``BaseTransform`` shallow-copies it and attributes are
replaced, never written in place); it refuses a ``Batch``: transform graphs before batching.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch_geometric.transforms import BaseTransform

from graphattn import rules
from graphattn._random import seed_key
from graphattn._validate import check_bool, check_int
from graphattn.graph import AttentionGraph, NodeType
from graphattn.transforms._data import (check_data, check_edge_key, derive_seed, fingerprint, label_key_for,
                                        merge, node_level_keys, read_attention, write_attention)

__all__ = ["AddAttentionGraph", "AddExpanderEdges", "AddVirtualNodes", "AddLocalEdges"]

#: Fill value of integer ``y`` on virtual nodes: ``torch.nn.functional.cross_entropy``'s default
#: ``ignore_index``, so a loss over all nodes skips virtual nodes instead of training on them.
IGNORE_INDEX = -100


class _AttentionTransform(BaseTransform):
    """Common parts: the edge key, the label key, reading and merging the stored edges."""

    def __init__(self, key: str, labels: bool):
        name = type(self).__name__
        self.key = check_edge_key(key, name)
        self.labels = check_bool("labels", labels)
        self.label_key = label_key_for(self.key, name) if self.labels else None

    def _add(self, data, num_nodes: int, graph: AttentionGraph) -> None:
        existing = read_attention(data, self.key, self.label_key, num_nodes, type(self).__name__)
        write_attention(data, self.key, self.label_key, merge(existing, graph))


class AddAttentionGraph(_AttentionTransform):
    """Store the attention graph ``rule(num_nodes)`` under ``data[key]`` (union with edges
    already there).

    Args:
        rule: a callable from the node count to an :class:`~graphattn.AttentionGraph` over
            exactly that many nodes, e.g. ``lambda n: rules.band(n, radius=2)``. Rules that
            append extra nodes (``rules.global_nodes``, ``rules.etc``, ``rules.bigbird_etc``,
            ``rules.star_transformer``, ``rules.bp_transformer``) are refused: the edges must index
            the data's nodes, and :class:`AddVirtualNodes` appends global nodes to the data
            (features, masks and all). Per-head layouts (``head_mask``) cannot be stored as one
            edge index and are refused; relative-position ids are not stored.
        key: where the edges go; must contain ``"index"`` so PyG offsets them per graph.
        labels: also store the edge labels under ``key`` with ``"index"`` -> ``"label"``.

    Sequence rules connect nearby ids: renumber the nodes first (:class:`PermuteNodes` with
    :func:`rcm_order`) so that nearby ids are nearby nodes.

    >>> from torch_geometric.data import Data
    >>> data = Data(x=torch.zeros(4, 1), edge_index=torch.tensor([[0, 1], [1, 2]]))
    >>> out = AddAttentionGraph(lambda n: rules.band(n, radius=1))(data)
    >>> out.attn_edge_index.shape, sorted(out.keys())
    (torch.Size([2, 10]), ['attn_edge_index', 'attn_edge_label', 'edge_index', 'x'])
    """

    def __init__(self, rule: Callable[[int], AttentionGraph], *, key: str = "attn_edge_index",
                 labels: bool = True):
        if not callable(rule):
            raise TypeError(f"expected rule to be a callable from num_nodes to an AttentionGraph, "
                            f"got {type(rule).__name__}")
        super().__init__(key, labels)
        self.rule = rule

    def forward(self, data):
        n = check_data(data, "AddAttentionGraph")
        g = self.rule(n)
        if not isinstance(g, AttentionGraph):
            raise TypeError(f"AddAttentionGraph: expected rule({n}) to return an AttentionGraph, "
                            f"got {type(g).__name__}")
        if g.num_nodes != n:
            extra = g.num_nodes > n and bool((g.node_type[n:] != NodeType.TOKEN).any())
            hint = (" (the rule appends global/relay/span nodes; add global nodes to the data with "
                    "AddVirtualNodes(count) instead)") if extra else ""
            raise ValueError(f"AddAttentionGraph: expected rule({n}) to return a graph over the "
                             f"data's {n} nodes, got num_nodes={g.num_nodes}{hint}")
        if g.head_mask is not None:
            raise ValueError("AddAttentionGraph: expected a graph without a per-head layout "
                             "(head_mask); one edge index cannot store it")
        self._add(data, n, g)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule!r}, key={self.key!r})"


class AddExpanderEdges(_AttentionTransform):
    """Exphormer's expander edges (Shirzad et al., 2023): a uniformly random ``degree``-regular
    graph on each graph's nodes (:func:`graphattn.rules.random_regular`; both directions and
    every self-loop), merged into ``data[key]``.

    A random ``d``-regular graph is an expander with high probability (its second adjacency
    eigenvalue is about ``2 sqrt(d - 1)``, Friedman 2008), so a few attention layers connect every
    pair of nodes with only ``O(d n)`` edges.

    Randomness: the expander is a pure function of ``(seed, graph, round)``, the graph being
    identified by a digest of its node count, ``edge_index`` and ``x`` (so two graphs get
    different expanders unless they are identical). With ``resample=False`` the round is 0: the
    same graph always gets the same expander (dataset transforms stay deterministic). With
    ``resample=True`` the round is the number of times this transform instance has already seen
    that graph, so every epoch draws a new expander, reproducibly for a given seed and access
    order (with DataLoader workers each worker counts its own visits). ``seed`` is an
    int, a ``torch.Generator`` or ``None`` (torch's default generator); a generator is drawn from
    once, when the transform is built.

    Small graphs: a ``d``-regular simple graph on ``n`` nodes needs ``d < n`` and ``n d`` even.
    Otherwise a ``ValueError`` is raised, unless ``clip=True``: then the degree is the largest
    valid one not above ``degree`` (``min(degree, n - 1)``, minus one if ``n`` times that is odd;
    ``n - 1`` gives the complete graph).

    >>> from torch_geometric.data import Data
    >>> t = AddExpanderEdges(3, seed=0)
    >>> data = Data(x=torch.zeros(8, 1), edge_index=torch.tensor([[0, 1], [1, 2]]))
    >>> out = t(data)
    >>> torch.bincount(out.attn_edge_index[1]).tolist()   # 3 neighbours + self per node
    [4, 4, 4, 4, 4, 4, 4, 4]
    >>> torch.equal(out.attn_edge_index, t(data).attn_edge_index)
    True
    """

    def __init__(self, degree: int, *, seed=None, resample: bool = False, clip: bool = False,
                 key: str = "attn_edge_index", labels: bool = True):
        super().__init__(key, labels)
        self.degree = check_int("degree", degree, minimum=0)
        self.resample = check_bool("resample", resample)
        self.clip = check_bool("clip", clip)
        self.seed = seed
        self._key = seed_key(seed)
        self._visits: dict[bytes, int] = {}

    def degree_for(self, num_nodes: int) -> int:
        """The degree used on a graph of ``num_nodes`` nodes (see *Small graphs*)."""
        n, d = num_nodes, self.degree
        if n and d < n and (n * d) % 2 == 0:
            return d
        if not self.clip and n:
            raise ValueError(f"AddExpanderEdges: expected degree < num_nodes and num_nodes * degree even, "
                             f"got degree={d} on a graph of {n} nodes; pass clip=True to use the "
                             "largest valid degree on small graphs")
        d = min(d, max(n - 1, 0))
        return d - 1 if (n * d) % 2 else d

    def forward(self, data):
        n = check_data(data, "AddExpanderEdges")
        d = self.degree_for(n)
        fp = fingerprint(data, n)
        round_ = 0
        if self.resample:
            round_ = self._visits.get(fp, 0)
            self._visits[fp] = round_ + 1
        g = rules.random_regular(n, degree=d, seed=derive_seed(self._key, fp, round_))
        self._add(data, n, g)
        return data

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.degree}, seed={self.seed}, resample={self.resample}, "
                f"clip={self.clip}, key={self.key!r})")


class AddLocalEdges(_AttentionTransform):
    """Merge the local graph's edges (``data.edge_index``, as given) into the attention edges,
    plus every self-loop when ``self_loops`` (Exphormer's attention graph contains the input
    graph). Labels: ``EdgeLabel.CUSTOM`` for graph edges, ``EdgeLabel.SELF`` for added loops.

    >>> from torch_geometric.data import Data
    >>> out = AddLocalEdges()(Data(edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=3))
    >>> out.attn_edge_index.tolist(), out.attn_edge_label.tolist()
    ([[0, 0, 1, 1, 2], [0, 1, 1, 2, 2]], [13, 0, 13, 0, 13])
    """

    def __init__(self, *, self_loops: bool = True, key: str = "attn_edge_index", labels: bool = True):
        super().__init__(key, labels)
        self.self_loops = check_bool("self_loops", self_loops)

    def forward(self, data):
        n = check_data(data, "AddLocalEdges")
        edge_index = data.get("edge_index") if "edge_index" in data else None
        if edge_index is None:
            edge_index = torch.empty(2, 0, dtype=torch.int64)
        g = AttentionGraph.from_edge_index(edge_index, n)
        if self.self_loops:
            g = g.with_self_loops()
        self._add(data, n, g)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(self_loops={self.self_loops}, key={self.key!r})"


class AddVirtualNodes(_AttentionTransform):
    """Append ``count`` virtual (global) nodes that attend every node and that every node attends
    (ETC's global nodes, Ainslie et al., 2020; Exphormer's virtual nodes; the star that keeps
    sparse attention universal, BigBird, Zaheer et al., 2020).

    The new nodes are ``n .. n + count - 1``. Their attention edges are those of
    :func:`graphattn.rules.global_nodes` (each real node attends itself and the virtual nodes,
    each virtual node attends all nodes; label ``GLOBAL``), merged with the edges already under
    ``data[key]``; if there are none, the attention graph is that star plus self-loops. The local
    ``edge_index`` is unchanged: virtual nodes have no local edges.

    Every node-level tensor (``x``, ``y``, masks, ...: ``num_nodes`` rows along PyG's
    concatenation dim, keys with ``"index"`` or ``"edge"`` excluded) grows by ``count`` rows:

    - ``x`` and other float attributes: zeros. Virtual nodes have no input features; a model
      gives them a learned embedding by adding a parameter on the rows of the mask, e.g.
      ``h = h + data.virtual_node_mask[:, None] * self.virtual_embedding``.
    - integer ``y``: ``-100``, the default ``ignore_index`` of ``cross_entropy`` (float ``y``:
      NaN), so virtual nodes never count as labelled; other integer attributes: 0.
    - bool attributes (``train_mask``, ...): False.
    - ``data.virtual_node_mask``: True on the new nodes (created, or extended if present).

    ``data.num_nodes`` becomes ``n + count``. Apply this transform after the others that add
    attention edges.

    >>> from torch_geometric.data import Data
    >>> out = AddVirtualNodes(1)(Data(x=torch.ones(3, 2), edge_index=torch.tensor([[0], [1]])))
    >>> out.num_nodes, out.x[-1].tolist(), out.virtual_node_mask.tolist()
    (4, [0.0, 0.0], [False, False, False, True])
    >>> out.attn_edge_index.tolist()
    [[0, 3, 1, 3, 2, 3, 0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]]
    """

    mask_key = "virtual_node_mask"

    def __init__(self, count: int, *, key: str = "attn_edge_index", labels: bool = True):
        super().__init__(key, labels)
        self.count = check_int("count", count, minimum=0)

    @staticmethod
    def _fill(key: str, value: torch.Tensor, dim: int, count: int) -> torch.Tensor:
        shape = list(value.shape)
        shape[dim] = count
        if value.dtype == torch.bool:
            fill = False
        elif key == "y":
            fill = IGNORE_INDEX if not value.dtype.is_floating_point else float("nan")
        else:
            fill = 0
        return torch.cat([value, torch.full(shape, fill, dtype=value.dtype, device=value.device)], dim=dim)

    def forward(self, data):
        n = check_data(data, "AddVirtualNodes")
        existing = read_attention(data, self.key, self.label_key, n, "AddVirtualNodes")
        keys = [k for k in node_level_keys(data) if k != self.mask_key]
        mask = data.get(self.mask_key) if self.mask_key in data else None
        for key in keys:
            value = data[key]
            dim = data.__cat_dim__(key, value) % value.dim()
            data[key] = self._fill(key, value, dim, self.count)
        if mask is None:
            x = data.get("x") if "x" in data else None
            mask = torch.zeros(n, dtype=torch.bool, device=x.device if isinstance(x, torch.Tensor) else None)
        data[self.mask_key] = torch.cat([mask.bool(), torch.ones(self.count, dtype=torch.bool, device=mask.device)])
        data.num_nodes = n + self.count
        star = rules.global_nodes(n, num_global=self.count)
        if existing is not None:
            star = existing.add_nodes(self.count, node_type=NodeType.GLOBAL) | star
        write_attention(data, self.key, self.label_key, star)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.count}, key={self.key!r})"

