"""Structure of attention graphs: size, reach and the universal-approximation conditions.

Reading convention (see :mod:`graphattn`): the edge ``(j, i)`` means query ``i`` attends key
``j``, so in one layer information flows from ``j`` to ``i``. Stacking layers composes these
one-step flows, and the residual connection keeps every node's own state, so after ``L`` layers
token ``u`` can influence token ``v`` exactly when the graph holds a directed path ``u -> v`` of
at most ``L`` edges (Yun et al., 2020, Sec. 3; the "receptive field"). Paths may
pass through extra nodes (ETC globals, the Star relay, BPT spans): those nodes are updated by
every layer too. A per-head layout (``head_mask``) counts an edge when any head uses it: heads
are mixed by the output projection of the same layer.

References:
    Zaheer et al., "Big Bird: Transformers for Longer Sequences", NeurIPS 2020 (Sec. 3: a
    pattern containing a star graph keeps universal approximation; Theorem 1).
    Yun, Chang, Bhojanapalli, Rawat, Reddi, Kumar, "O(n) Connections are Expressive Enough:
    Universal Approximability of Sparse Transformers", NeurIPS 2020 (Assumption 1, Theorem 1).
    Crescenzi, Grossi, Lanzi, Marino, "On Computing the Diameter of Real-World Directed (and
    Undirected) Graphs", WEA 2012 (DiFUB, used by :func:`hops_to_cover`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order, connected_components

from graphattn._validate import check_int
from graphattn.analysis._common import check_graph, check_schedule, edges_numpy, flow_matrix, token_index
from graphattn.analysis._propagate import propagate
from graphattn.graph import AttentionGraph

__all__ = ["summary", "hops_to_cover", "receptive_field", "contains_star", "yun_conditions"]

# A bitset layer over 64 sources costs about half a BFS (measured: ~3 ns per word-edge against
# ~6 ns per edge for scipy's BFS); hops_to_cover switches from DiFUB to propagation when
# (BFS visits DiFUB would make) > _BITSET_FACTOR * (diameter bound) * (words of 64 tokens).
_BITSET_FACTOR = 0.5


# ---------------------------------------------------------------------------------- summary
def summary(g: AttentionGraph) -> dict:
    """Size and shape of an attention graph.

    Returns a dict with

    * ``num_nodes``, ``num_tokens``, ``num_edges``;
    * ``keys_per_query_mean``, ``keys_per_query_max``: keys per query over the nodes that attend
      at least one key (embedding nodes of the Star-Transformer, which attend nothing, are not
      queries), as in the graph's ``repr``;
    * ``hub_in_degree``: the most queries attending one key (the attention a hub receives: a
      global token's is ``n``), and ``hub``, that key's node id (the smallest on ties);
    * ``density``: ``num_edges / num_nodes**2``;
    * ``num_components`` and ``is_connected``: weakly connected components over all nodes
      (``scipy.sparse.csgraph.connected_components``); an empty graph has 0 and is not connected.

    >>> from graphattn import rules
    >>> s = summary(rules.band(6, radius=1) | rules.global_tokens(6, global_indices=[0]))
    >>> s["num_edges"], s["keys_per_query_max"], s["hub_in_degree"], s["hub"], s["is_connected"]
    (24, 6, 6, 0, True)
    """
    g = check_graph("g", g)
    n = g.num_nodes
    deg = g.keys_per_query()
    queries = deg[deg > 0]
    attended = torch.bincount(g.edge_index[0], minlength=n) if n else deg
    ncomp = connected_components(flow_matrix(g), directed=True, connection="weak")[0] if n else 0
    return {
        "num_nodes": n,
        "num_tokens": g.num_tokens,
        "num_edges": g.num_edges,
        "keys_per_query_mean": float(queries.double().mean()) if queries.numel() else 0.0,
        "keys_per_query_max": int(queries.max()) if queries.numel() else 0,
        "hub_in_degree": int(attended.max()) if n else 0,
        "hub": int(attended.argmax()) if n else None,
        "density": g.density(),
        "num_components": int(ncomp),
        "is_connected": ncomp == 1,
    }


# ---------------------------------------------------------------------------------- hops
def _bfs(A: sp.csr_matrix, source: int) -> np.ndarray:
    """Float distances from ``source`` along the arcs of ``A`` (``inf`` where unreached).

    scipy's ``breadth_first_order`` (C, ``O(N + E)``) gives the BFS tree; depths follow by
    pointer jumping on the predecessor array (``O(N log depth)`` vectorised steps), which is
    many times faster than an unweighted Dijkstra.
    """
    order, pred = breadth_first_order(A, int(source), directed=True, return_predecessors=True)
    n = A.shape[0]
    anc = np.full(n, -1, dtype=np.int64)
    anc[order[1:]] = pred[order[1:]]
    depth = (anc >= 0).astype(np.int64)  # invariant: depth[v] = d(anc[v], v)
    live = order[1:]
    while live.size:
        up = anc[live]
        depth[live] += depth[up]
        anc[live] = anc[up]
        live = live[anc[live] >= 0]
    out = np.full(n, np.inf)
    out[order] = depth[order]
    return out


def _bfs_max(A: sp.csr_matrix, sources: np.ndarray, targets: np.ndarray) -> float:
    """``max`` over ``sources x targets`` of the BFS distance along the arcs of ``A``."""
    return max((float(_bfs(A, s)[targets].max()) for s in sources.tolist()), default=0.0)


def _token_diameter(g: AttentionGraph, A: sp.csr_matrix, tokens: np.ndarray, component: np.ndarray,
                    lower: int) -> int:
    """``max_{u != v tokens} d(u, v)`` when every token reaches every token.

    DiFUB (Crescenzi et al., 2012): for a root ``r`` with forward distances ``f(y) = d(r, y)``
    and backward ``b(x) = d(x, r)``, ``d(x, y) <= b(x) + f(y)``. Visiting tokens by decreasing
    level, the forward eccentricity of every ``x`` with ``b(x) = i`` and the backward one of
    every ``y`` with ``f(y) = i``, once the levels above ``i`` are done every pair not yet
    measured has ``d <= min(i, max b) + min(i, max f)``; the search stops when the best
    distance found reaches that bound. The root is the better (smaller eccentricity) of the
    highest-degree node and the midpoint of a double sweep, so a band stops after the tokens of
    its top level.

    When the levels to visit hold many tokens (expanders, BP-Transformer: small diameter, no
    central root), all-sources bitset propagation over at most ``max f + max b`` layers is
    cheaper (``_propagate``: about half a BFS per layer and 64 sources), and is used instead.
    """
    AT = A.T.tocsr()
    symmetric = (A != AT).nnz == 0
    lb = lower
    inside = np.flatnonzero(component)
    degree = np.asarray(A.getnnz(axis=0) + A.getnnz(axis=1))
    hub = int(inside[np.argmax(degree[inside])])
    # Double sweep: a farthest token a from the hub, a token b farthest from reaching a.
    f_hub = _bfs(A, hub)
    a = int(tokens[np.argmax(f_hub[tokens])])
    to_a = _bfs(AT, a)
    b = int(tokens[np.argmax(to_a[tokens])])
    sweep = int(to_a[b])
    from_b = _bfs(A, b)
    lb = max(lb, sweep, int(from_b[tokens].max()))
    on_path = np.flatnonzero((from_b + to_a == sweep) & (from_b == sweep // 2))
    mid = int(on_path[0])
    roots = []
    for r in dict.fromkeys((hub, mid)):
        f = f_hub if r == hub else _bfs(A, r)
        back = f if symmetric else _bfs(AT, r)
        roots.append((max(f[tokens].max(), back[tokens].max()), r, f[tokens], back[tokens]))
    _, root, f, back = min(roots, key=lambda x: (x[0], x[1]))
    is_token = np.zeros(A.shape[0], dtype=bool)
    is_token[tokens] = True
    if is_token[root]:  # the root's own eccentricities are token-pair distances too
        lb = max(lb, int(f.max()), int(back.max()))
    fmax, bmax = int(f.max()), int(back.max())
    # Work estimate: tokens on the levels DiFUB would visit with the bound known now.
    levels = np.arange(max(fmax, bmax) + 1)
    stop = int(levels[np.minimum(levels, bmax) + np.minimum(levels, fmax) <= lb].max())
    visits = int((back > stop).sum()) + (0 if symmetric else int((f > stop).sum()))
    if visits > _BITSET_FACTOR * (fmax + bmax) * (-(-tokens.size // 64)):
        return propagate((g,), tokens, None)
    for i in range(max(fmax, bmax), 0, -1):
        if lb >= min(i, bmax) + min(i, fmax):
            break
        xs = tokens[back == i]  # forward eccentricities of the tokens i steps before the root
        if xs.size:
            lb = max(lb, int(_bfs_max(A, xs, tokens)))
        ys = tokens[f == i]  # backward eccentricities of the tokens i steps after the root
        if ys.size and not symmetric:
            lb = max(lb, int(_bfs_max(AT, ys, tokens)))
    return lb


def hops_to_cover(g: AttentionGraph) -> int | float:
    """Layers until every token can influence every token: the largest, over ordered pairs of
    distinct tokens ``(u, v)``, of the shortest directed path length from ``u`` to ``v`` along
    the edges key -> query (paths may pass through extra nodes). ``math.inf`` when some token
    never reaches another; 0 for fewer than two tokens.

    This is the token diameter of the graph, the depth also called the receptive-field
    depth (Yun et al., 2020: ``S^s_k = [n]`` for ``s`` at least this many layers of one
    pattern), and the least ``L`` for which :func:`receptive_field` counts every token.
    Closed forms: a band of radius ``r`` on ``n`` tokens gives ``ceil((n-1)/r)``; any pattern
    with a star (:func:`contains_star`: BigBird's global tokens, the Star-Transformer relay,
    ETC globals) gives 2 unless it is complete (1).

    Algorithm and cost: ``O(E)`` checks first (complete: 1; a star: 2; strongly connected
    components, scipy: ``inf``). Otherwise the exact token diameter by DiFUB (Crescenzi et al.,
    2012) with BFS (scipy ``breadth_first_order``) from a few sources, ``O(k (N + E))`` with
    ``k`` about 6 plus the tokens of the top BFS levels (``<= 2r`` for a band: band(10^5,
    radius=4) takes well under a second); or, when that ``k`` would be large (small-diameter
    graphs without a star: expanders, BP-Transformer), all-sources bitset propagation,
    ``O(D * E * n / 64)`` word operations for diameter ``D``. Memory ``O(N + E)`` plus bounded
    bitset chunks.

    >>> from graphattn import rules
    >>> hops_to_cover(rules.band(10, radius=2)), hops_to_cover(rules.star_transformer(10))
    (5, 2)
    >>> hops_to_cover(rules.band(10, radius=2, causal=True))
    inf
    """
    g = check_graph("g", g)
    tokens = token_index(g)
    nt = tokens.size
    if nt <= 1:
        return 0
    key, query = edges_numpy(g)
    is_token = np.zeros(g.num_nodes, dtype=bool)
    is_token[tokens] = True
    direct = int((is_token[key] & is_token[query] & (key != query)).sum())
    if direct == nt * (nt - 1):
        return 1
    # Some ordered token pair has no edge, so its distance, hence the answer, is at least 2;
    # a star center relays every pair in 2.
    if _has_star(key, query, is_token, nt):
        return 2
    A = flow_matrix(g, self_loops=False, dtype=np.float64)  # csgraph's dtype: no copy per BFS
    _, scc = connected_components(A, directed=True, connection="strong")
    if bool((scc[tokens] != scc[tokens[0]]).any()):
        return math.inf
    return _token_diameter(g, A, tokens, scc == scc[tokens[0]], lower=2)


# ---------------------------------------------------------------------------------- receptive field
def receptive_field(g, layers: int | None = None) -> torch.Tensor:
    """For each token, how many tokens can influence it after ``layers`` layers.

    ``g`` is one graph, applied at every layer, or a schedule (a list/tuple of graphs over the
    same nodes, e.g. from :func:`graphattn.compose.schedule`): layer ``t`` uses
    ``g[t % len(g)]``, cycling as the patterns of Yun et al. (2020) do; ``layers`` defaults to
    ``len(g)`` for a schedule and is required for a single graph. Every layer also keeps each
    node's own state (the residual, a self-loop), so the count includes the token itself and
    never decreases with depth. Extra nodes start empty and relay what they receive.

    Returns int64 ``[num_tokens]``, in token order (node id order of the ``TOKEN`` nodes).
    Closed form for a band of radius ``r`` on ``n`` tokens after ``L`` layers:
    ``min(i + L r, n - 1) - max(i - L r, 0) + 1``.

    Computed by bitset propagation (see :mod:`graphattn.analysis._propagate`): at most
    ``O(L * E * n / 64)`` word operations, and far less in practice because propagation is
    semi-naive (only edges out of nodes whose set changed are visited, and it stops at a
    fixpoint); memory ``O(N * chunk)`` bits with the source tokens in chunks.

    >>> from graphattn import rules
    >>> receptive_field(rules.band(7, radius=1), 2).tolist()
    [3, 4, 5, 5, 5, 4, 3]
    >>> receptive_field([rules.band(7, radius=1), rules.full(7)]).tolist()
    [7, 7, 7, 7, 7, 7, 7]
    """
    graphs = check_schedule("g", g)
    if layers is None:
        if isinstance(g, AttentionGraph):
            raise ValueError("expected layers for a single graph (the number of layers to apply), got None")
        layers = len(graphs)
    layers = check_int("layers", layers, minimum=0)
    tokens = token_index(graphs[0])
    return torch.from_numpy(propagate(graphs, tokens, layers))


# ---------------------------------------------------------------------------------- universal approximation
def contains_star(g: AttentionGraph) -> bool:
    """Whether some node attends every token and is attended by every token.

    BigBird's sufficient condition for universal approximation (Zaheer et al., 2020, Theorem 1:
    a sparse attention pattern that contains the star graph ``S`` is a universal approximator
    of continuous sequence-to-sequence functions): a center ``s`` (a token, e.g. an ITC global
    token, or an extra node, e.g. an ETC global or the Star-Transformer relay) with the edges
    ``(s, i)`` and ``(i, s)`` for every token ``i != s``. Self-loops are not required.
    ``O(E)``.

    >>> from graphattn import rules
    >>> contains_star(rules.star_transformer(8)), contains_star(rules.band(8, radius=2))
    (True, False)
    >>> contains_star(rules.bigbird(256, block_size=16, seed=0))
    True
    """
    g = check_graph("g", g)
    tokens = token_index(g)
    nt = tokens.size
    if nt == 0:
        return False
    key, query = edges_numpy(g)
    is_token = np.zeros(g.num_nodes, dtype=bool)
    is_token[tokens] = True
    return _has_star(key, query, is_token, nt)


def _has_star(key: np.ndarray, query: np.ndarray, is_token: np.ndarray, nt: int) -> bool:
    n = is_token.size
    off = key != query
    attended_by = np.bincount(key[off & is_token[query]], minlength=n)  # tokens attending s
    attends = np.bincount(query[off & is_token[key]], minlength=n)  # tokens s attends
    need = nt - is_token.astype(np.int64)
    return bool(((attended_by == need) & (attends == need)).any())


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy 2's hash-based unique is many times slower on 10^7 ints)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a


def _contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Membership of ``x`` in a sorted array, by binary search."""
    if sorted_values.size == 0:
        return np.zeros(x.shape, dtype=bool)
    pos = np.searchsorted(sorted_values, x).clip(max=sorted_values.size - 1)
    return sorted_values[pos] == x


def _token_arcs(graphs, tokens: np.ndarray):
    """Token-to-token arcs (key, query) of every layer, tokens renumbered ``0..nt-1``."""
    rank = np.full(graphs[0].num_nodes, -1, dtype=np.int64)
    rank[tokens] = np.arange(tokens.size)
    out = []
    for g in graphs:
        key, query = edges_numpy(g)
        rk, rq = rank[key], rank[query]
        keep = (rk >= 0) & (rq >= 0)
        out.append((rk[keep], rq[keep]))
    return out


def _hamiltonian_path_dp(succ: list[int], n: int) -> bool:
    """Held-Karp over subsets: ``ends[mask]`` is the bitset of vertices where a path visiting
    exactly ``mask`` can end. ``O(2^n n^2)`` bit operations; callers keep ``n`` small."""
    full = (1 << n) - 1
    ends = [0] * (1 << n)
    for v in range(n):
        ends[1 << v] = 1 << v
    for mask in range(1, full + 1):
        e = ends[mask]
        if not e:
            continue
        if mask == full:
            return True
        while e:
            v = (e & -e).bit_length() - 1
            e &= e - 1
            nxt = succ[v] & ~mask
            while nxt:
                u = nxt & -nxt
                nxt ^= u
                ends[mask | u] |= u
    return False


def _hamiltonian_path(arcs, nt: int, exact_limit: int):
    """True / False / "unknown" for a directed Hamiltonian path in the union of ``arcs``."""
    if nt <= 1:
        return True
    key = np.concatenate([k for k, _ in arcs])
    query = np.concatenate([q for _, q in arcs])
    keep = key != query
    key, query = key[keep], query[keep]
    codes = _sorted_unique(query * nt + key)
    key, query = codes % nt, codes // nt
    chain = np.arange(nt - 1)
    # Cheap sufficient checks: the chain 0 -> 1 -> ... -> n-1 (query i+1 attends key i) or its
    # reverse (query i attends key i+1); or every unordered pair joined in some direction (a
    # tournament has a Hamiltonian path, Redei 1934).
    if _contains(codes, (chain + 1) * nt + chain).all() or _contains(codes, chain * nt + chain + 1).all():
        return True
    pairs = _sorted_unique(np.minimum(key, query) * nt + np.maximum(key, query))
    if pairs.size == nt * (nt - 1) // 2:
        return True
    # Cheap necessary checks: weakly connected; at most one token without an incoming arc
    # (the path's start) and at most one without an outgoing arc (its end).
    A = sp.csr_matrix((np.ones(key.size, dtype=np.int8), (key, query)), shape=(nt, nt))
    if connected_components(A, directed=True, connection="weak")[0] > 1:
        return False
    if (np.bincount(query, minlength=nt) == 0).sum() > 1 or (np.bincount(key, minlength=nt) == 0).sum() > 1:
        return False
    if nt > exact_limit:
        return "unknown"
    succ = [0] * nt
    for k, q in zip(key.tolist(), query.tolist()):
        succ[k] |= 1 << q
    return _hamiltonian_path_dp(succ, nt)


def yun_conditions(schedule, *, exact_limit: int = 12) -> dict:
    """The sufficient conditions of Yun et al. (2020, Assumption 1) for a sparse Transformer
    whose layers cycle through the patterns ``schedule`` to be a universal approximator of
    continuous sequence-to-sequence functions (their Theorem 1, with softmax, which satisfies
    their Assumption 2). With ``A^l_k`` the tokens that token ``k`` attends in pattern ``l``:

    1. ``self_loops``: ``k in A^l_k`` for every token ``k`` and pattern ``l``;
    2. ``hamiltonian_path``: a permutation ``gamma`` of the tokens with ``gamma(i) in
       A^l_{gamma(i+1)}`` for some ``l``: a directed Hamiltonian path in the union of the
       patterns (information flowing key -> query);
    3. ``full_coverage``: some finite ``s`` with ``S^s_k = [n]`` for every ``k``, where
       ``S^1_k = A^1_k`` and ``S^t_k`` is the union of ``S^{t-1}_j`` over ``j`` in the pattern
       of layer ``t`` (cycling): every token depends on every token after ``s`` layers.

    Their framework has tokens only, so the conditions are evaluated on the token-to-token
    edges: extra nodes (globals, relay, spans) and the edges touching them are ignored (use
    :func:`contains_star` for the star condition that such nodes give). ``full_coverage`` is
    evaluated with the residual made explicit (each token keeps its own state, as
    :func:`receptive_field`); under condition 1 this is exactly condition 3, and it holds iff the
    union of the patterns is strongly connected over the tokens.

    ``hamiltonian_path`` is decided cheaply where possible: True when the union holds the chain
    ``0 -> 1 -> ... -> n-1`` or its reverse, or joins every pair of tokens in some direction
    (Redei's theorem on tournaments); False when the union is not weakly connected or more than
    one token lacks an in-arc (or an out-arc); otherwise decided exactly by a Held-Karp subset
    search when ``num_tokens <= exact_limit``, else ``"unknown"``.

    Returns a dict: ``self_loops`` (bool), ``hamiltonian_path`` (True / False / "unknown"),
    ``full_coverage`` (bool), ``coverage_layers`` (the least ``s``, cycling through the
    schedule with residuals; ``math.inf`` without coverage), ``satisfied`` (True when all three
    hold, False when one fails, "unknown" otherwise).

    Cost: ``O(E)`` plus, for ``coverage_layers``, :func:`hops_to_cover` of the token graph for
    a single pattern, or bitset propagation (``O(s * E * n / 64)`` word operations at most) for
    a schedule of several.

    >>> from graphattn import rules
    >>> yun_conditions(rules.band(16, radius=1))["satisfied"]
    True
    >>> c = yun_conditions([rules.band(16, radius=1, causal=True), rules.full(16)])
    >>> c["full_coverage"], c["coverage_layers"], c["satisfied"]
    (True, 2, True)
    >>> yun_conditions(rules.band(16, radius=1).without_self_loops())["satisfied"]
    False
    """
    graphs = check_schedule("schedule", schedule)
    exact_limit = check_int("exact_limit", exact_limit, minimum=0, maximum=20)
    tokens = token_index(graphs[0])
    nt = tokens.size
    arcs = _token_arcs(graphs, tokens)
    self_loops = all(np.bincount(k[k == q], minlength=nt).all() for k, q in arcs)
    # Coverage: the union must be strongly connected over the tokens (with residuals each cycle
    # contains every layer's arcs, so then it covers within p * diameter(union) layers).
    key = np.concatenate([k for k, _ in arcs])
    query = np.concatenate([q for _, q in arcs])
    union = sp.csr_matrix((np.ones(key.size, dtype=np.int8), (key, query)), shape=(nt, nt))
    full_coverage = nt == 0 or connected_components(union, directed=True, connection="strong")[0] == 1
    if not full_coverage:
        coverage_layers = math.inf
    elif len(graphs) == 1:
        tok_graph = AttentionGraph.from_edge_index(
            torch.from_numpy(np.stack([key, query])), nt)
        coverage_layers = hops_to_cover(tok_graph)
    else:
        coverage_layers = propagate(_token_graphs(arcs, nt), np.arange(nt), None)
        coverage_layers = math.inf if coverage_layers is None else coverage_layers
    ham = _hamiltonian_path(arcs, nt, exact_limit)
    parts = (self_loops, ham, full_coverage)
    if any(p is False for p in parts):
        satisfied = False
    elif all(p is True for p in parts):
        satisfied = True
    else:
        satisfied = "unknown"
    return {
        "self_loops": bool(self_loops),
        "hamiltonian_path": ham,
        "full_coverage": bool(full_coverage),
        "coverage_layers": coverage_layers,
        "satisfied": satisfied,
    }


def _token_graphs(arcs, nt: int) -> tuple[AttentionGraph, ...]:
    return tuple(AttentionGraph.from_edge_index(torch.from_numpy(np.stack([k, q])), nt) for k, q in arcs)
