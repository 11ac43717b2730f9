"""graphattn.analysis.spectral against dense eigenvalues, networkx and closed forms."""

import math

import networkx as nx
import numpy as np
import pytest
import torch

from graphattn import AttentionGraph, rules
from graphattn.analysis import spectral, spectrum


def nx_support(g):
    """Undirected support graph without self-loops, built independently with networkx."""
    G = nx.Graph()
    G.add_nodes_from(range(g.num_nodes))
    G.add_edges_from((j, i) for j, i in g.edge_index.t().tolist() if i != j)
    return G


def dense_reference(g):
    G = nx_support(g)
    L = nx.laplacian_matrix(G, nodelist=range(g.num_nodes)).toarray().astype(float)
    w = np.linalg.eigvalsh(L)
    Nl = nx.normalized_laplacian_matrix(G, nodelist=range(g.num_nodes)).toarray()
    wn = np.linalg.eigvalsh(Nl)
    return w[1], w[-1], wn[1]


GRAPHS = [
    lambda: rules.band(40, radius=2),
    lambda: rules.random(60, num_random_keys=3, seed=1),
    lambda: rules.star_transformer(15),
    lambda: rules.bp_transformer(32, k=1),
    lambda: rules.bigbird(128, block_size=8, seed=0),
    lambda: rules.etc(30, num_global=2, radius=1),
    lambda: rules.random_regular(50, degree=4, seed=2),
    lambda: rules.longformer(40, radius=1, dilation=[1, 2], global_indices=[0]),
]


@pytest.mark.parametrize("make", GRAPHS, ids=range(len(GRAPHS)))
def test_small_graphs_against_dense_and_networkx(make):
    g = make()
    lam2, lmax, gap = dense_reference(g)
    s = spectral(g)
    assert s["method"] == "dense" and s["converged"]
    assert s["lambda_2"] == pytest.approx(lam2, rel=1e-9, abs=1e-9)
    assert s["lambda_2"] == pytest.approx(nx.algebraic_connectivity(nx_support(g), tol=1e-12, method="tracemin_lu"),
                                          rel=1e-6)
    assert s["lambda_max"] == pytest.approx(lmax, rel=1e-9)
    assert s["normalized_gap"] == pytest.approx(gap, rel=1e-9, abs=1e-12)
    assert s["epsilon"] == pytest.approx((lmax - lam2) / (lmax + lam2), rel=1e-9)
    assert s["kappa"] == pytest.approx(lmax / lam2, rel=1e-9)
    assert s["num_components"] == 1


@pytest.mark.parametrize("make,method", [
    (lambda: rules.band(500, radius=3), "factor"),
    (lambda: rules.dilated(400, radius=2, dilation=3) | rules.band(400, radius=1), "factor"),
    (lambda: rules.star_transformer(300), "factor"),
    (lambda: rules.star_transformer(300, cyclic=False), "factor"),
    (lambda: rules.etc(400, num_global=3, radius=2), "factor"),
    (lambda: rules.longformer(400, radius=2, dilation=[1, 4], global_indices=[0, 399]), "factor"),
    (lambda: rules.random_regular(600, degree=6, seed=4), "lobpcg"),
    (lambda: rules.bigbird(512, block_size=16, seed=3), "lobpcg"),
    (lambda: rules.bp_transformer(256, k=2), "lobpcg"),
    (lambda: rules.random(500, num_random_keys=2, seed=1) | rules.band(500, radius=1), "lobpcg"),
], ids=["band", "dilated", "star", "star_open", "etc", "longformer", "regular", "bigbird", "bpt", "random"])
def test_sparse_solvers_against_dense(make, method, monkeypatch):
    if method == "lobpcg":  # small graphs would factor cheaply: force the iterative path
        monkeypatch.setattr(spectrum, "_FACTOR_CELLS", 0)
    g = make()
    lam2, lmax, gap = dense_reference(g)
    s = spectral(g, dense_limit=2)
    assert s["method"] == method and s["converged"]
    rel = 1e-9 if method == "factor" else 1e-4
    assert s["lambda_2"] == pytest.approx(lam2, rel=rel)
    assert s["lambda_max"] == pytest.approx(lmax, rel=1e-6)
    assert s["normalized_gap"] == pytest.approx(gap, rel=rel)


@pytest.mark.parametrize("make", [
    lambda: rules.star_transformer(200), lambda: rules.star_transformer(201, cyclic=False),
    lambda: rules.band(300, radius=2), lambda: rules.etc(250, num_global=2, radius=1),
    lambda: rules.longformer(300, radius=1, dilation=[1, 3], global_indices=[7]),
], ids=["star", "star_open", "band", "etc", "longformer"])
def test_spectrum_slicing_against_dense(make, monkeypatch):
    # force the inertia-bisection path of the factor solver (no Lanczos on the inverse)
    monkeypatch.setattr(spectrum, "_LANCZOS_MAXITER", 0)
    g = make()
    lam2, lmax, gap = dense_reference(g)
    s = spectral(g, dense_limit=2)
    assert s["method"] == "factor"
    assert s["lambda_2"] == pytest.approx(lam2, rel=1e-9)
    assert s["normalized_gap"] == pytest.approx(gap, rel=1e-9)
    assert s["lambda_max"] == pytest.approx(lmax, rel=1e-9)


def test_closed_forms():
    # complete graph: every nontrivial eigenvalue is n
    s = spectral(rules.full(30))
    assert s["lambda_2"] == pytest.approx(30) and s["lambda_max"] == pytest.approx(30)
    assert s["epsilon"] == pytest.approx(0, abs=1e-12) and s["kappa"] == pytest.approx(1)
    # star K_{1,n}: 1 and n + 1 (global node attending and attended by every token, no band)
    n = 20
    hub = torch.full((n,), n)
    ei = torch.cat([torch.stack([hub, torch.arange(n)]), torch.stack([torch.arange(n), hub])], dim=1)
    s = spectral(AttentionGraph.from_edge_index(ei, n + 1))
    assert s["lambda_2"] == pytest.approx(1) and s["lambda_max"] == pytest.approx(n + 1)
    assert s["normalized_gap"] == pytest.approx(1)
    assert s["ramanujan_ratio"] is None and s["degree"] is None


def test_path_closed_form_at_scale():
    # band radius 1 = path P_n: eigenvalues 2 - 2 cos(pi k / n)
    n = 20_000
    s = spectral(rules.band(n, radius=1))
    assert s["method"] == "factor"
    assert s["lambda_2"] == pytest.approx(2 - 2 * math.cos(math.pi / n), rel=1e-8)
    assert s["lambda_max"] == pytest.approx(2 - 2 * math.cos(math.pi * (n - 1) / n), rel=1e-10)
    # normalised Laplacian of a path: 1 - cos(pi k / (n - 1))
    assert s["normalized_gap"] == pytest.approx(1 - math.cos(math.pi / (n - 1)), rel=1e-8)
    # path is 2-regular? no (ends have degree 1)
    assert s["degree"] is None


def test_cycle_is_ramanujan_and_bipartite_handled():
    # ring of 12 satellites without the relay: an even cycle, 2-regular and bipartite
    idx = torch.arange(12)
    ei = torch.cat([torch.stack([idx, (idx + 1) % 12]), torch.stack([(idx + 1) % 12, idx])], dim=1)
    s = spectral(AttentionGraph.from_edge_index(ei, 12))
    assert s["degree"] == 2
    assert s["lambda_max"] == pytest.approx(4)  # bipartite: mu_N = -2 is trivial
    assert s["ramanujan_ratio"] == pytest.approx((2 - s["lambda_2"]) / 2)
    assert s["ramanujan_ratio"] == pytest.approx(math.cos(2 * math.pi / 12))


def test_disconnected():
    s = spectral(rules.block_local(64, block_size=8))
    assert s["lambda_2"] == 0.0 and s["epsilon"] == 1.0 and s["kappa"] == math.inf
    assert s["num_components"] == 8 and s["method"] == "disconnected" and s["normalized_gap"] == 0.0
    assert s["lambda_max"] == pytest.approx(8)  # K_8 blocks
    s = spectral(rules.block_local(4000, block_size=4))
    assert s["lambda_max"] == pytest.approx(4) and s["num_components"] == 1000
    s = spectral(rules.band(10, radius=0))  # no edges at all
    assert s["lambda_max"] == 0.0 and s["num_components"] == 10


def test_random_regular_near_ramanujan():  # ~3 s on 2 shared cores, most of it networkx sampling
    # Friedman: random d-regular graphs have every nontrivial adjacency eigenvalue within
    # 2 sqrt(d - 1) + o(1); at n = 20,000 the ratio sits near 1.
    s = spectral(rules.random_regular(20_000, degree=8, seed=0))
    assert s["method"] == "lobpcg" and s["converged"] and s["degree"] == 8
    assert 0.9 < s["ramanujan_ratio"] < 1.1
    assert s["lambda_2"] == pytest.approx(8 - 2 * math.sqrt(7), rel=0.05)
    assert s["normalized_gap"] == pytest.approx(s["lambda_2"] / 8, rel=1e-3)


def test_errors():
    with pytest.raises(TypeError, match="AttentionGraph"):
        spectral(np.eye(3))
    with pytest.raises(ValueError, match="at least 2 nodes"):
        spectral(rules.full(1))
    with pytest.raises(ValueError, match="dense_limit >= 2"):
        spectral(rules.full(3), dense_limit=0)
