"""Node orderings for graphs, so that sequence rules (band, BigBird, ...) make sense on them.

A sequence rule such as :func:`graphattn.rules.band` connects nodes whose *ids* are close. On a
graph, ids are arbitrary unless the nodes are first renumbered so that neighbours get close ids.
Each function here returns such a renumbering as a permutation ``order`` (``order[k]`` is the old
id of the node that becomes node ``k``); :class:`PermuteNodes` applies one to a PyG ``Data``.

- :func:`bfs_order`: breadth-first search order.
- :func:`rcm_order`: reverse Cuthill-McKee (Cuthill & McKee, 1969; George, 1971), the classic
  bandwidth-reducing ordering, started at a George-Liu pseudo-peripheral node (George & Liu, 1979).
- :func:`spectral_order`: spectral sequencing (Fiedler, 1973; Atkins, Boman & Hendrickson, 1998):
  sort by the Fiedler vector, the Laplacian eigenvector of the second smallest eigenvalue.

All three treat the graph as undirected and unweighted (both directions of every edge, self-loops
and duplicates ignored) and handle disconnected graphs component by component: components appear
in the order of their smallest node id (reversed as a whole for :func:`rcm_order`), so a batch of
disjoint graphs keeps the graphs in their order. Ties are broken by node id, so every ordering is a
deterministic function of the edge set.
"""

from __future__ import annotations

import torch

from graphattn._validate import check_edge_index, check_int

__all__ = ["bfs_order", "rcm_order", "spectral_order", "connected_components"]


# ---------------------------------------------------------------------------- graph helpers
def _check_edges(edge_index, num_nodes) -> tuple[torch.Tensor, int]:
    edge_index, num_nodes = check_edge_index(edge_index, num_nodes)
    return edge_index.detach().cpu(), num_nodes


def _undirected_csr(edge_index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(ptr [n+1], col [E'])`` of the simple undirected graph: both directions, no
    self-loops, no duplicates; each row's neighbours sorted by id."""
    src = torch.cat([edge_index[0], edge_index[1]])
    dst = torch.cat([edge_index[1], edge_index[0]])
    keep = src != dst
    code = torch.unique(src[keep] * max(n, 1) + dst[keep])  # sorted: by row, then column
    row, col = code // max(n, 1), code % max(n, 1)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(row, minlength=n), 0, out=ptr[1:])
    return ptr, col


def _segments(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenation of ``arange(s, s + c)`` for each pair, and the pair index of each entry.

    The pair index comes from a binary search in the cumulative counts rather than from
    ``repeat_interleave``, whose per-call overhead dominates the many small calls of a deep BFS.
    """
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1]) if ends.numel() else 0
    pos = torch.arange(total)
    seg = torch.searchsorted(ends, pos, right=True)
    return (starts - (ends - counts))[seg] + pos, seg


def _components(ptr: torch.Tensor, col: torch.Tensor, n: int) -> torch.Tensor:
    """Label of every node = smallest node id of its connected component.

    FastSV-style min-label propagation (Shiloach & Vishkin, 1982; Zhang, Azad & Hu, 2020): each
    round hooks every label tree onto the smallest label next to it (``f[f[u]] <- min f[v]``) and
    every node onto it directly, then shortcuts the trees to stars by pointer jumping
    (``f <- f[f]`` until stable). Labels only decrease and always name a node of the same
    component; at the fixed point the label is constant on each component and equals its
    smallest id (that node can never get a smaller label). About ``log n`` rounds of ``O(E)``.
    """
    f = torch.arange(n)
    if n == 0 or col.numel() == 0:
        return f
    row = torch.repeat_interleave(torch.arange(n), ptr.diff(), output_size=col.numel())
    while True:
        mn = f.scatter_reduce(0, row, f[col], "amin", include_self=True)  # min label around u
        new = f.scatter_reduce(0, f, mn, "amin", include_self=True)  # hook u's root
        new = torch.minimum(new, mn)  # and u itself
        while True:  # shortcut to stars
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, f):
            return f
        f = new


def connected_components(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Component label of every node: the smallest node id of its (weakly) connected component.

    >>> connected_components(torch.tensor([[0, 3], [1, 4]]), 5).tolist()
    [0, 0, 2, 3, 3]
    """
    edge_index, n = _check_edges(edge_index, num_nodes)
    ptr, col = _undirected_csr(edge_index, n)
    return _components(ptr, col, n)


def _stable_argsort(key: torch.Tensor) -> torch.Tensor:
    return torch.sort(key, stable=True).indices


def _bfs(ptr, col, n, roots, child_key=None):
    """Level-synchronous breadth-first search from ``roots`` (one per component, in component
    order), all components at once.

    A queue-based BFS that pushes the unvisited neighbours of each popped node sorted by
    ``(child_key, id)`` visits level ``l + 1`` in the order ``(rank of first-visited parent,
    child_key, id)``; computing that order level by level gives exactly the queue order with one
    vectorised step per level instead of one Python step per node. Cost: ``O(E)`` work plus a
    constant number of small tensor ops per level (about 0.1 ms on CPU), so deep graphs (long
    paths) pay per level.

    Returns ``level [n]`` (-1 when unreached) and ``rank [n]`` (position inside its level, over
    all components; component-major because level 0 is).
    """
    level = torch.full((n,), -1, dtype=torch.int64)
    rank = torch.full((n,), -1, dtype=torch.int64)
    # owner[v]: position, in the current level's candidate list, of v's first-visited parent.
    owner = torch.full((n,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    level[roots] = 0
    rank[roots] = torch.arange(roots.numel())
    deg = ptr.diff()
    frontier, depth = roots, 0
    while frontier.numel():
        # The frontier is in rank order and each CSR row is in id order, so the candidate list
        # is sorted by (parent rank, id): a node's first occurrence is its first-visited parent.
        idx, seg = _segments(ptr[frontier], deg[frontier])  # seg: the parent's rank
        nbr = col[idx]
        fresh = (level[nbr] < 0).nonzero().flatten()
        if fresh.numel() == 0:
            break
        nbr, seg = nbr[fresh], seg[fresh]
        pos = torch.arange(nbr.numel())
        owner.scatter_reduce_(0, nbr, pos, "amin")
        first = owner[nbr] == pos
        new = nbr[first]  # sorted by (parent rank, id)
        if child_key is not None:
            ck = child_key[new]
            new = new[_stable_argsort(seg[first] * (int(ck.max()) + 1) + ck)]
        depth += 1
        level[new] = depth
        rank[new] = torch.arange(new.numel())
        frontier = new
    return level, rank


def _traversal(level, rank, comp) -> torch.Tensor:
    """Node ids sorted by (component, level, rank inside level)."""
    order = _stable_argsort(rank)
    order = order[_stable_argsort(level[order])]
    return order[_stable_argsort(comp[order])]


def _component_roots(labels: torch.Tensor) -> torch.Tensor:
    """The component labels (smallest ids), sorted: component ``c`` is the c-th smallest."""
    return torch.unique(labels)


def bfs_order(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Breadth-first search order: each component from its smallest node id, neighbours in id
    order; components by smallest id.

    Returns the permutation ``order`` (``order[k]`` = old id of new node ``k``).

    >>> bfs_order(torch.tensor([[0, 0, 1], [3, 2, 4]]), 5).tolist()
    [0, 2, 3, 1, 4]
    """
    edge_index, n = _check_edges(edge_index, num_nodes)
    ptr, col = _undirected_csr(edge_index, n)
    labels = _components(ptr, col, n)
    roots = _component_roots(labels)
    level, rank = _bfs(ptr, col, n, roots)
    return _traversal(level, rank, labels)


def _min_per_component(key: torch.Tensor, comp: torch.Tensor, candidates: torch.Tensor, num_comp: int,
                       n: int) -> torch.Tensor:
    """For each component, the candidate node with the smallest ``(key, id)``."""
    code = key[candidates] * max(n, 1) + candidates
    best = torch.full((num_comp,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    best.scatter_reduce_(0, comp[candidates], code, "amin")
    return best % max(n, 1)


def rcm_order(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Reverse Cuthill-McKee order (Cuthill & McKee, 1969; reversed as George, 1971 suggests).

    In each component a Cuthill-McKee breadth-first search visits the unvisited neighbours of a
    node by increasing degree (ties by id). It starts at a pseudo-peripheral node found by George
    and Liu's (1979) iteration: from the minimum-degree node (ties by id), move to the
    minimum-degree node of the last BFS level while that increases the eccentricity. The
    concatenated order (components by smallest id) is reversed as a whole. Reducing the
    bandwidth ``max |order^-1(u) - order^-1(v)|`` over edges is what makes a band of small radius
    over the new ids cover graph neighbourhoods.

    Returns the permutation ``order`` (``order[k]`` = old id of new node ``k``).

    >>> path = torch.tensor([[0, 2, 4, 3], [2, 4, 3, 1]])   # the path 0-2-4-3-1
    >>> rcm_order(path, 5).tolist()
    [1, 3, 4, 2, 0]
    """
    edge_index, n = _check_edges(edge_index, num_nodes)
    ptr, col = _undirected_csr(edge_index, n)
    deg = ptr.diff()
    labels = _components(ptr, col, n)
    comp_ids = _component_roots(labels)
    comp_of = torch.searchsorted(comp_ids, labels)  # component index of every node
    nodes = torch.arange(n)
    roots = _min_per_component(deg, comp_of, nodes, comp_ids.numel(), n)
    level, rank = _bfs(ptr, col, n, roots, deg)
    ecc = torch.zeros(comp_ids.numel(), dtype=torch.int64).scatter_reduce(0, comp_of, level, "amax")
    # George-Liu: jump to the min-degree node of the deepest level while eccentricity grows.
    while True:
        last = nodes[level == ecc[comp_of]]
        cand = _min_per_component(deg, comp_of, last, comp_ids.numel(), n)
        c_level, c_rank = _bfs(ptr, col, n, cand, deg)
        c_ecc = torch.zeros_like(ecc).scatter_reduce(0, comp_of, c_level, "amax")
        better = c_ecc > ecc
        if not bool(better.any()):
            break
        # Ranks inside a level are component-major in both runs, so mixing components taken from
        # two runs keeps every component's internal order; _traversal sorts by component first.
        take = better[comp_of]
        level = torch.where(take, c_level, level)
        rank = torch.where(take, c_rank, rank)
        ecc = torch.where(better, c_ecc, ecc)
    return _traversal(level, rank, comp_of).flip(0)


def spectral_order(edge_index: torch.Tensor, num_nodes: int, *, max_dense: int = 1024) -> torch.Tensor:
    """Spectral sequencing (Fiedler, 1973; Atkins, Boman & Hendrickson, 1998): in each
    component, sort the nodes by the Fiedler vector, the eigenvector of the second smallest
    eigenvalue of the combinatorial Laplacian ``L = D - A``. The Fiedler vector minimises
    ``sum_{(u,v) in E} (f_u - f_v)^2`` over unit vectors orthogonal to the constant vector, so
    adjacent nodes get close values: on a path it is monotone and the order is the path.

    The eigenvector's sign is fixed so the component's smallest-id node does not come after its
    largest-id node; ties are broken by node id. When the second eigenvalue is repeated (cycles,
    complete graphs, stars) the Fiedler vector is not unique and the order is one valid choice.

    Components of at most ``max_dense`` nodes are solved exactly with a batched dense
    ``torch.linalg.eigh`` in float64 (grouped by size); larger ones with ``scipy.sparse.linalg.eigsh``
    in shift-invert mode (needs scipy).

    Returns the permutation ``order`` (``order[k]`` = old id of new node ``k``).

    >>> path = torch.tensor([[0, 2, 4, 3], [2, 4, 3, 1]])   # the path 0-2-4-3-1
    >>> spectral_order(path, 5).tolist()
    [0, 2, 4, 3, 1]
    """
    edge_index, n = _check_edges(edge_index, num_nodes)
    max_dense = check_int("max_dense", max_dense, minimum=2)
    ptr, col = _undirected_csr(edge_index, n)
    labels = _components(ptr, col, n)
    comp_ids = _component_roots(labels)
    comp_of = torch.searchsorted(comp_ids, labels)
    sizes = torch.bincount(comp_of, minlength=comp_ids.numel())
    # Position of each node inside its component (nodes of a component in id order).
    by_comp = _stable_argsort(comp_of)
    starts = torch.cumsum(sizes, 0) - sizes
    local = torch.empty(n, dtype=torch.int64)
    local[by_comp] = torch.arange(n) - starts[comp_of[by_comp]]
    fiedler = torch.zeros(n, dtype=torch.float64)
    row = torch.repeat_interleave(torch.arange(n), ptr.diff(), output_size=col.numel())
    # Group nodes by (component size, component, id) and edges by (component size, component),
    # so each size group, and each component in it, is a contiguous slice: O(n + E) in all.
    node_perm = by_comp[_stable_argsort(sizes[comp_of[by_comp]])]
    e_comp = comp_of[row]
    e_perm = _stable_argsort(e_comp)
    e_perm = e_perm[_stable_argsort(sizes[e_comp[e_perm]])]
    node_sz, edge_sz = sizes[comp_of[node_perm]], sizes[e_comp[e_perm]]
    for s in torch.unique(sizes).tolist():
        if s < 3:
            continue  # one node, or two (the Fiedler vector of an edge follows id order)
        nodes = node_perm[int(torch.searchsorted(node_sz, s)):int(torch.searchsorted(node_sz, s, right=True))]
        edges = e_perm[int(torch.searchsorted(edge_sz, s)):int(torch.searchsorted(edge_sz, s, right=True))]
        edge_comp = e_comp[edges]  # sorted
        # Dense: chunks of at most ~2**24 matrix entries; sparse: one component at a time.
        per_chunk = max(1, (1 << 24) // (s * s)) if s <= max_dense else 1
        for c0 in range(0, nodes.numel() // s, per_chunk):
            chunk = nodes[c0 * s:(c0 + per_chunk) * s]
            comps = comp_of[chunk[::s]]
            lo = int(torch.searchsorted(edge_comp, comps[0]))
            hi = int(torch.searchsorted(edge_comp, comps[-1], right=True))
            r, c = row[edges[lo:hi]], col[edges[lo:hi]]
            slot = torch.searchsorted(comps, comp_of[r])
            solve = _dense_fiedler if s <= max_dense else _sparse_fiedler
            vec = solve(comps.numel(), s, slot, local[r], local[c], ptr.diff()[chunk])
            fiedler[chunk] = vec.reshape(-1)
    # Sign: the smallest-id node of each component must not sort after the largest-id one.
    first = starts
    last = starts + sizes - 1
    lo_val, hi_val = fiedler[by_comp[first]], fiedler[by_comp[last]]
    flip = lo_val > hi_val
    fiedler = torch.where(flip[comp_of], -fiedler, fiedler)
    order = _stable_argsort(fiedler)  # ties keep id order
    return order[_stable_argsort(comp_of[order])]


def _dense_fiedler(k, s, slot, r, c, deg) -> torch.Tensor:
    """Fiedler vectors ``[k, s]`` of ``k`` components of ``s`` nodes: edge ``(r, c)`` (local ids)
    of component ``slot``; ``deg`` the degrees ``[k * s]`` in component-major order."""
    L = torch.zeros(k, s, s, dtype=torch.float64)
    L[slot, r, c] = -1.0
    L.diagonal(dim1=1, dim2=2).copy_(deg.view(k, s).double())
    return torch.linalg.eigh(L).eigenvectors[..., 1]  # eigenvalues ascending: column 1 = Fiedler


def _sparse_fiedler(k, s, slot, r, c, deg) -> torch.Tensor:
    """The Fiedler vector ``[1, s]`` of one large component (scipy, shift-invert)."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    A = sp.csc_matrix((np.ones(r.numel()), (r.numpy(), c.numpy())), shape=(s, s))
    L = (sp.diags(deg.double().numpy()) - A).tocsc()
    # Shift-invert around a small negative sigma: L - sigma I is positive definite, and the two
    # eigenvalues nearest sigma are 0 (constant vector) and the Fiedler value. The start vector
    # is fixed so the result does not depend on ARPACK's random start.
    vals, vecs = eigsh(L, k=2, sigma=-1e-3, which="LM", v0=np.linspace(1.0, 2.0, s))
    return torch.from_numpy(vecs[:, int(np.argmax(vals))].copy())[None]
