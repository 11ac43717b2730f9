"""Node orderings against independent references: networkx BFS, a plain queue-based
Cuthill-McKee with George-Liu start, numpy's dense eigendecomposition for Fiedler vectors."""

from collections import deque

import networkx as nx
import numpy as np
import pytest
import torch

from graphattn.transforms.ordering import bfs_order, connected_components, rcm_order, spectral_order


def random_graph(seed, n=None, p=None):
    """A random directed edge list (often disconnected, with isolated nodes, loops, duplicates)."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 40, (1,), generator=g)) if n is None else n
    p = float(torch.rand(1, generator=g)) * 4.0 / max(n, 1) if p is None else p
    m = int(p * n * n) + 1
    edges = torch.randint(0, n, (2, m), generator=g)
    return edges, n


def simple_undirected(edges, n):
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from((u, v) for u, v in edges.t().tolist() if u != v)
    return G


def components_in_order(G):
    return sorted((sorted(c) for c in nx.connected_components(G)), key=lambda c: c[0])


def ref_bfs(edges, n):
    G = simple_undirected(edges, n)
    order = []
    for comp in components_in_order(G):
        root = comp[0]
        order += [root] + [v for _, v in nx.bfs_edges(G, root, sort_neighbors=sorted)]
    return order


def ref_rcm(edges, n):
    G = simple_undirected(edges, n)
    deg = dict(G.degree())
    key = lambda v: (deg[v], v)  # noqa: E731
    order = []
    for comp in components_in_order(G):
        root = min(comp, key=key)
        levels = nx.single_source_shortest_path_length(G, root)
        ecc = max(levels.values())
        while True:  # George-Liu pseudo-peripheral node
            cand = min((v for v in comp if levels[v] == ecc), key=key)
            cl = nx.single_source_shortest_path_length(G, cand)
            if max(cl.values()) <= ecc:
                break
            root, levels, ecc = cand, cl, max(cl.values())
        queue, seen = deque([root]), {root}
        while queue:
            u = queue.popleft()
            order.append(u)
            for v in sorted((w for w in G[u] if w not in seen), key=key):
                seen.add(v)
                queue.append(v)
    return order[::-1]


def is_permutation(order, n):
    return order.dtype == torch.int64 and order.shape == (n,) and torch.equal(order.sort().values, torch.arange(n))


def bandwidth(edges, order):
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel())
    return int((inv[edges[0]] - inv[edges[1]]).abs().max()) if edges.numel() else 0


@pytest.mark.parametrize("seed", range(25))
def test_bfs_matches_networkx(seed):
    edges, n = random_graph(seed)
    order = bfs_order(edges, n)
    assert is_permutation(order, n)
    assert order.tolist() == ref_bfs(edges, n)


@pytest.mark.parametrize("seed", range(25))
def test_rcm_matches_reference(seed):
    edges, n = random_graph(seed)
    order = rcm_order(edges, n)
    assert is_permutation(order, n)
    assert order.tolist() == ref_rcm(edges, n)


@pytest.mark.parametrize("seed", range(10))
def test_components_match_networkx(seed):
    edges, n = random_graph(seed, n=60)
    labels = connected_components(edges, n)
    expected = torch.empty(n, dtype=torch.int64)
    for comp in nx.connected_components(simple_undirected(edges, n)):
        expected[sorted(comp)] = min(comp)
    assert torch.equal(labels, expected)


def shuffled(edges, n, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[edges], perm


@pytest.mark.parametrize("seed", range(5))
def test_rcm_recovers_small_bandwidth(seed):
    # A path and a 2-radius band, renumbered at random: RCM brings the bandwidth back to 1 and
    # at most 2r (Cuthill-McKee never exceeds twice the band of a band graph from its end).
    n = 50
    line = torch.arange(n - 1)
    path = torch.stack([line, line + 1])
    sp, _ = shuffled(path, n, seed)
    assert bandwidth(sp, rcm_order(sp, n)) == 1
    i = torch.arange(n)
    band = torch.cat([torch.stack([i[:-k], i[k:]]) for k in (1, 2)], dim=1)
    sb, _ = shuffled(band, n, seed)
    assert bandwidth(sb, torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100))) > 4
    assert bandwidth(sb, rcm_order(sb, n)) <= 4


def test_rcm_grid_bandwidth_matches_scipy():
    scipy_csgraph = pytest.importorskip("scipy.sparse.csgraph")
    import scipy.sparse as sp

    G = nx.convert_node_labels_to_integers(nx.grid_2d_graph(6, 9))
    edges = torch.tensor(list(G.edges())).t()
    n = G.number_of_nodes()
    edges, _ = shuffled(edges, n, 3)
    ours = bandwidth(edges, rcm_order(edges, n))
    A = sp.coo_matrix((np.ones(edges.shape[1]), (edges[0].numpy(), edges[1].numpy())), shape=(n, n))
    theirs = bandwidth(edges, torch.from_numpy(scipy_csgraph.reverse_cuthill_mckee(
        (A + A.T).tocsr(), symmetric_mode=True).astype(np.int64)))
    assert ours <= theirs and ours == 6  # the optimal bandwidth of a 6 x 9 grid is 6


def ref_fiedler(edges, n):
    """Per component: the numpy Fiedler vector and whether its eigenvalue is simple."""
    G = simple_undirected(edges, n)
    out = []
    for comp in components_in_order(G):
        if len(comp) < 3:
            out.append((comp, np.zeros(len(comp)), True))
            continue
        L = nx.laplacian_matrix(G, nodelist=comp).toarray().astype(np.float64)
        vals, vecs = np.linalg.eigh(L)
        out.append((comp, vecs[:, 1], vals[2] - vals[1] > 1e-6))
    return out


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("max_dense", [1024, 3])
def test_spectral_sorts_by_fiedler_vector(seed, max_dense):
    edges, n = random_graph(seed)
    order = spectral_order(edges, n, max_dense=max_dense)
    assert is_permutation(order, n)
    pos = 0
    for comp, f, simple in ref_fiedler(edges, n):
        block = order[pos:pos + len(comp)].tolist()
        pos += len(comp)
        assert sorted(block) == comp  # components stay together, by smallest id
        if len(comp) < 3:
            assert block == comp
            continue
        if not simple:
            continue  # the Fiedler vector is not unique: any eigenvector of lambda_2 is valid
        v = f[[comp.index(u) for u in block]]
        if v[0] > v[-1]:
            v = -v  # the sign is a convention; compare up to it
        assert np.all(np.diff(v) >= -1e-7), (seed, block)
        lo, hi = f[0], f[-1]  # smallest-id and largest-id node of the component
        if abs(lo - hi) > 1e-7:
            assert block.index(comp[0]) < block.index(comp[-1])


@pytest.mark.parametrize("max_dense", [1024, 8])
def test_spectral_recovers_a_shuffled_path(max_dense):
    n = 40
    line = torch.arange(n - 1)
    edges, _ = shuffled(torch.stack([line, line + 1]), n, 0)
    order = spectral_order(edges, n, max_dense=max_dense)
    assert bandwidth(edges, order) == 1
    # and it starts at the end whose id is smaller than the other end's, per the sign rule
    # sign rule: the smallest id (0) comes before the largest (n - 1)
    where = order.argsort()
    assert int(where[0]) < int(where[n - 1])


def test_empty_and_edgeless():
    empty = torch.empty(2, 0, dtype=torch.int64)
    for fn in (bfs_order, rcm_order, spectral_order):
        assert fn(empty, 0).tolist() == []
        assert fn(empty, 4).tolist() == ([3, 2, 1, 0] if fn is rcm_order else [0, 1, 2, 3])


def test_long_path():
    # deep graphs take one vectorised step per BFS level (5,000 levels here)
    n = 5000
    line = torch.arange(n - 1)
    path = torch.stack([line, line + 1])
    assert bfs_order(path, n).tolist() == list(range(n))
    assert rcm_order(path, n).tolist() == list(range(n))[::-1]


@pytest.mark.parametrize("fn", [bfs_order, rcm_order, spectral_order, connected_components])
def test_bad_input(fn):
    with pytest.raises(TypeError, match="edge_index"):
        fn([[0], [1]], 2)
    with pytest.raises(TypeError, match="integers"):
        fn(torch.zeros(2, 1), 2)
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        fn(torch.zeros(3, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"\[0, num_nodes=2\)"):
        fn(torch.tensor([[0], [2]]), 2)
    with pytest.raises(ValueError, match="num_nodes >= 0"):
        fn(torch.empty(2, 0, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="max_dense >= 2"):
        spectral_order(torch.empty(2, 0, dtype=torch.long), 3, max_dense=1)
