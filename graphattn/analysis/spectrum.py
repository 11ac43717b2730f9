r"""Spectral comparison of an attention pattern with full attention (the complete graph).

BigBird (Zaheer et al., 2020, Sec. 2) motivates random attention by expanders: sparse graphs
that approximate the complete graph spectrally. Spielman and Teng ("Spectral Sparsification of
Graphs", SIAM J. Comput. 2011) call ``H`` an :math:`\epsilon`-approximation of ``G`` when
:math:`(1-\epsilon) L_G \preceq c L_H \preceq (1+\epsilon) L_G` for some scale ``c``. For ``G``
the complete graph ``K_N`` (whose Laplacian is ``N I - J``, every nontrivial eigenvalue ``N``) the
best scale gives

.. math::
    \epsilon = \frac{\lambda_{max} - \lambda_2}{\lambda_{max} + \lambda_2}, \qquad
    \kappa = \frac{\lambda_{max}}{\lambda_2} = \frac{1 + \epsilon}{1 - \epsilon},

with :math:`\lambda_2` (the algebraic connectivity, Fiedler 1973) and :math:`\lambda_{max}` the
extreme nontrivial eigenvalues of ``L_H``: :math:`\kappa` is the relative condition number of
``L_H`` against ``L_{K_N}`` on the complement of the constant vector. A disconnected ``H``
has :math:`\lambda_2 = 0`, :math:`\epsilon = 1`, :math:`\kappa = \infty`.

For a ``d``-regular graph the adjacency eigenvalues are ``d - lambda`` for the Laplacian's;
Ramanujan graphs (Lubotzky, Phillips and Sarnak, 1988) have every nontrivial adjacency
eigenvalue within :math:`2\sqrt{d-1}` in absolute value, the Alon-Boppana limit, and random
``d``-regular graphs are nearly Ramanujan (Friedman, 2008).

Every edge counts whatever heads use it (a per-head layout is read as its union).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components, reverse_cuthill_mckee

from graphattn._validate import check_int
from graphattn.analysis._common import check_graph, edges_numpy
from graphattn.graph import AttentionGraph

__all__ = ["spectral"]

try:  # optional: installed with scikit-learn and many scientific stacks
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - without it BLAS keeps its default threads
    _threadpool_limits = None


def _one_blas_thread():
    """The sparse solvers apply BLAS to tall-skinny blocks (``N x 1..3``), where threads only
    add overhead; on a busy machine OpenBLAS's spinning threads made LOBPCG on
    random_regular(20000, 8) take 57 s instead of 0.5 s (measured on 2 shared cores), and the
    dense path (``N <= dense_limit``) gains little from them (1024: 0.043 s against 0.058 s).
    Limit BLAS to one thread while the solvers run, when threadpoolctl is available."""
    if _threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return _threadpool_limits(limits=1, user_api="blas")


_FACTOR_CELLS = 3 * 10**7  # N * (bandwidth + hubs + 1) factor entries for the "factor" solver
_FACTOR_WORK = 2 * 10**9  # N * (bandwidth + hubs + 1)**2 flops per factorisation
_MAX_HUBS = 64  # dense rows kept at the end of the ordering (globals, relay)
_LANCZOS_MAXITER = 20  # Lanczos restarts on the inverse before spectrum slicing takes over


def _support(g: AttentionGraph) -> sp.csr_matrix:
    """Symmetrised support graph without self-loops: ``A[u, v] = 1`` iff an edge joins them."""
    key, query = edges_numpy(g)
    off = key != query
    n = g.num_nodes
    rows = np.concatenate([key[off], query[off]])
    cols = np.concatenate([query[off], key[off]])
    A = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    A.data[:] = 1.0  # duplicates summed by the constructor: back to a 0/1 pattern
    return A


def _arrow_order(A: sp.csr_matrix, deg: np.ndarray):
    """Reverse Cuthill-McKee order of the non-hub nodes, hubs last, and whether the sparse
    ``LDL^T`` factors of matrices with this pattern stay small (a band plus a few dense rows:
    bands, dilated bands, Star-Transformer, ETC, Longformer globals). ``None`` otherwise."""
    n = A.shape[0]
    hubs = np.flatnonzero(deg > max(64.0, 16.0 * float(np.median(deg))))
    if hubs.size > _MAX_HUBS:
        return None
    rest = np.setdiff1d(np.arange(n), hubs)
    sub = A[rest][:, rest].tocsr()
    rest = rest[reverse_cuthill_mckee(sub, symmetric_mode=True)]
    order = np.concatenate([rest, hubs])
    P = A[rest][:, rest].tocoo()
    bandwidth = int(np.abs(P.row - P.col).max()) if P.nnz else 0
    width = bandwidth + hubs.size + 1
    if n * width > _FACTOR_CELLS or n * width * width > _FACTOR_WORK:
        return None
    return order


def _ldl(M: sp.spmatrix):
    """Sparse ``LDL^T`` in the given order (SuperLU without row or column pivoting), or
    ``None`` when it needs a pivot (a zero pivot: not positive definite)."""
    try:
        lu = spla.splu(M.tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                       options=dict(SymmetricMode=True))
    except RuntimeError:  # exactly singular
        return None
    if not np.array_equal(lu.perm_r, np.arange(M.shape[0])):
        return None
    return lu


def _positive_definite(M: sp.spmatrix) -> bool:
    """Sylvester: a symmetric ``M`` with an unpivoted ``LDL^T`` is positive definite iff every
    pivot is positive."""
    lu = _ldl(M)
    return lu is not None and bool((lu.U.diagonal() > 0).all())


class _Solver:
    """Second-smallest and largest eigenvalue of the pencil ``(L, B)`` (``B = I``: the
    Laplacian; ``B = D``: the normalised Laplacian ``D^-1/2 L D^-1/2``) of one connected graph.

    * ``dense`` (``N <= dense_limit``): ``numpy.linalg.eigvalsh``.
    * ``factor`` (band plus a few hubs, see :func:`_arrow_order`): ``lambda_2`` by Lanczos on
      ``B^1/2 L^+ B^1/2`` restricted to the complement of the kernel, applying ``L^+`` by a
      sparse factorisation of the grounded Laplacian (one node removed: SPD), so the wanted
      eigenvalue is the best separated one (ratio ``lambda_2 / lambda_3``), as shift-invert
      would make it; when ``lambda_2`` sits in a tight cluster (hub graphs: the Star relay)
      and Lanczos stalls, spectrum slicing by inertia (``_lambda_2_slicing``) instead;
      ``lambda_max`` by bisection on positive definiteness of ``sigma B - L`` (unpivoted
      ``LDL^T``), from a Lanczos bracket. Both to ~1e-11 relative.
    * ``lobpcg`` (expanders, BigBird, BP-Transformer: factors would fill in): Lanczos (ARPACK)
      for ``lambda_max``; LOBPCG with a Jacobi preconditioner, deflating the kernel, for
      ``lambda_2``, checked by its true residual (relative accuracy 1e-4 or better).
    """

    def __init__(self, A: sp.csr_matrix, deg: np.ndarray, dense_limit: int):
        self.n = n = A.shape[0]
        self.A, self.deg = A, deg
        self.order = None
        if n <= dense_limit:
            self.method = "dense"
        else:
            self.order = _arrow_order(A, deg)
            self.method = "lobpcg" if self.order is None else "factor"
        self.converged = True

    def _pencil(self, normalized: bool):
        L = (sp.diags(self.deg) - self.A).tocsr()
        b = self.deg if normalized else np.ones(self.n)
        return L, b

    def lambda_max(self, normalized: bool) -> float:
        L, b = self._pencil(normalized)
        if self.method == "dense":
            s = 1.0 / np.sqrt(b)
            return float(np.linalg.eigvalsh((L.multiply(s[:, None]).multiply(s[None, :])).toarray())[-1])
        s = sp.diags(1.0 / np.sqrt(b))
        M = (s @ L @ s).tocsr()  # symmetric form of the pencil
        rng = np.random.default_rng(1)  # local generator: no global random state is touched
        if self.method == "lobpcg":
            return float(spla.eigsh(M, k=1, which="LA", v0=rng.standard_normal(self.n), tol=1e-10,
                                    return_eigenvectors=False)[0])
        # Ritz value theta <= lambda_max, and some eigenvalue within the residual r of theta.
        try:
            vals, vecs = spla.eigsh(M, k=1, which="LA", v0=rng.standard_normal(self.n), tol=1e-6, maxiter=300)
        except spla.ArpackNoConvergence as e:  # clustered top (long bands): keep what came
            vals, vecs = e.eigenvalues, e.eigenvectors
        theta, r = 0.0, math.inf
        if len(vals):
            theta = float(vals[0])
            r = float(np.linalg.norm(M @ vecs[:, 0] - theta * vecs[:, 0]))
        Lo = L[self.order][:, self.order]
        Bo = sp.diags(b[self.order])
        upper = float(2.0 * (self.deg / b).max())  # Gershgorin bound of B^-1 L
        lo, hi = theta, upper
        if theta + 1.01 * r < upper and _positive_definite((theta + 1.01 * r) * Bo - Lo):
            hi = theta + 1.01 * r
        while hi - lo > 1e-11 * hi:
            mid = 0.5 * (lo + hi)
            if _positive_definite(mid * Bo - Lo):
                hi = mid
            else:
                lo = mid
        return 0.5 * (lo + hi)

    def lambda_2(self, normalized: bool, lmax: float) -> float:
        L, b = self._pencil(normalized)
        if self.method == "dense":
            s = 1.0 / np.sqrt(b)
            return float(np.linalg.eigvalsh((L.multiply(s[:, None]).multiply(s[None, :])).toarray())[1])
        if self.method == "factor":
            return self._lambda_2_factor(L, b)
        s = sp.diags(1.0 / np.sqrt(b))
        M = (s @ L @ s).tocsr()
        kernel = np.sqrt(b)
        precond = None if normalized else 1.0 / self.deg
        return self._lobpcg(M, kernel, precond, lmax)

    def _lambda_2_factor(self, L, b) -> float:
        order = self.order
        Lo = L[order][:, order]
        lu = _ldl(Lo[:-1, :-1])  # grounded at the last node: SPD for a connected graph
        if lu is None:  # pragma: no cover - SPD matrices factor without pivots
            raise RuntimeError("spectral: factorisation of the grounded Laplacian needed pivoting")
        sb = np.sqrt(b[order])
        kernel = sb / np.linalg.norm(sb)

        def apply(y):
            # P B^1/2 L^+ B^1/2 P with P the projection off the kernel B^1/2 1: projecting the
            # input too keeps the operator exactly symmetric, as Lanczos needs.
            y = np.asarray(y).ravel()
            y = y - kernel * (kernel @ y)
            u = sb * y  # orthogonal to the constants, so L w = u is solvable
            w = np.zeros(self.n)
            w[:-1] = lu.solve(u[:-1])
            z = sb * w
            return z - kernel * (kernel @ z)

        op = spla.LinearOperator((self.n, self.n), matvec=apply, dtype=np.float64)
        v0 = np.random.default_rng(2).standard_normal(self.n)
        v0 -= kernel * (kernel @ v0)
        theta = 0.0
        if _LANCZOS_MAXITER > 0:
            try:
                vals = spla.eigsh(op, k=1, which="LA", v0=v0, tol=1e-12, maxiter=_LANCZOS_MAXITER,
                                  return_eigenvectors=False)
                return 1.0 / float(vals[0])
            except spla.ArpackNoConvergence as e:  # lambda_2 in a tight cluster (hub graphs)
                theta = float(e.eigenvalues[0]) if len(e.eigenvalues) else 0.0
        return self._lambda_2_slicing(Lo, b[order], theta)

    def _lambda_2_slicing(self, Lo, bo, theta) -> float:
        """Spectrum slicing: by Sylvester's law of inertia the number of negative pivots of an
        unpivoted ``LDL^T`` of ``L - sigma B`` counts the eigenvalues below ``sigma``; bisection
        on ``count >= 2`` finds ``lambda_2`` to ~1e-11 relative whatever the clustering. A
        Ritz value ``theta`` of the inverse gives the start bound ``lambda_2 <= 1 / theta``
        (Courant-Fischer). Unpivoted ``LDL^T`` of an indefinite matrix is not backward stable
        in general; the counts are checked against dense eigenvalues in the tests."""
        Bo = sp.diags(bo)

        def below(a, b):
            """``(sigma, count of eigenvalues below sigma)`` for some ``sigma`` in ``(a, b)``
            near the middle: an exact eigenvalue (a zero pivot, common in symmetric graphs)
            is stepped around."""
            for frac in (0.5, 0.4142, 0.6180, 0.2929, 0.7071):
                sigma = a + frac * (b - a)
                lu = _ldl(Lo - sigma * Bo)
                if lu is not None:
                    return sigma, int((lu.U.diagonal() < 0).sum())
            raise RuntimeError(f"spectral: no unpivoted LDL^T of L - sigma B for sigma in ({a}, {b})")

        upper = float(2.0 * (self.deg / bo).max())  # Gershgorin: every eigenvalue is below
        hi = upper
        if theta > 0 and 1.0 / theta < upper:
            sigma, count = below(1.0 / theta, 1.0 / theta * (1.0 + 1e-9))
            if count >= 2:
                hi = sigma
        # Find lo with at most one eigenvalue (lambda_1 = 0) below it, halving geometrically.
        while True:
            lo, count = below(hi / 4.0, hi / 2.0 * 1.0001)
            if count <= 1:
                break
            hi = lo
        while hi - lo > 1e-11 * hi:
            sigma, count = below(lo, hi)
            if count >= 2:
                hi = sigma
            else:
                lo = sigma
        return 0.5 * (lo + hi)

    def _lobpcg(self, M, kernel, precond, lmax) -> float:
        rng = np.random.default_rng(0)
        Y = (kernel / np.linalg.norm(kernel))[:, None]
        X = rng.standard_normal((self.n, 1))
        T = None if precond is None else sp.diags(precond)
        lam2, residual, tol = math.nan, math.inf, 1e-7 * lmax
        for _ in range(4):  # restart from the current vector with a tighter tolerance if needed
            with warnings.catch_warnings():  # convergence is judged below, by the true residual
                warnings.simplefilter("ignore", UserWarning)
                w, X = spla.lobpcg(M, X, M=T, Y=Y, tol=tol, maxiter=2000, largest=False)
            x = X[:, 0] / np.linalg.norm(X[:, 0])
            lam2 = float(w[0])
            # Some eigenvalue lies within the residual norm of the Ritz value (Bauer-Fike for
            # symmetric M), and the Ritz value is an upper bound of lambda_2 (Courant-Fischer).
            residual = float(np.linalg.norm(M @ x - lam2 * x))
            if residual <= max(1e-4 * abs(lam2), 1e-10 * lmax):
                return lam2
            tol = max(1e-6 * abs(lam2), 1e-11 * lmax)
        self.converged = False
        warnings.warn(
            f"spectral: LOBPCG did not converge for lambda_2 on {self.n} nodes (residual {residual:.2e}); "
            "the returned value is an upper bound (a Ritz value)", RuntimeWarning, stacklevel=4)
        return lam2


def spectral(g: AttentionGraph, *, dense_limit: int = 1024) -> dict:
    r"""How well the pattern approximates full attention spectrally.

    Works on the symmetrised support graph of ``g`` over all its nodes without self-loops
    (``u ~ v`` when either attends the other) and its combinatorial Laplacian ``L = D - A``.

    Returns a dict:

    * ``lambda_2``: algebraic connectivity (second-smallest eigenvalue of ``L``; 0 when the
      support graph is disconnected);
    * ``lambda_max``: largest eigenvalue of ``L``;
    * ``epsilon`` :math:`= (\lambda_{max} - \lambda_2)/(\lambda_{max} + \lambda_2)`: the best
      spectral approximation factor of the complete graph (module docstring); 1 when
      disconnected;
    * ``kappa`` :math:`= \lambda_{max}/\lambda_2` (``inf`` when disconnected);
    * ``normalized_gap``: second-smallest eigenvalue of the normalised Laplacian
      :math:`I - D^{-1/2} A D^{-1/2}` (Chung, "Spectral Graph Theory", 1997), in ``[0, 2]``;
      it bounds the conductance by Cheeger's inequality and the mixing of random walks;
    * ``degree``: ``d`` when the support graph is ``d``-regular, else ``None``;
    * ``ramanujan_ratio``: for a ``d``-regular graph with ``d >= 2``,
      :math:`\max(|\mu_2|, |\mu_N|) / (2\sqrt{d-1})` with the adjacency eigenvalues
      :math:`\mu_2 = d - \lambda_2`, :math:`\mu_N = d - \lambda_{max}`: at most 1 for a
      Ramanujan graph, close to 1 for a random regular one (Friedman). For a bipartite graph
      (:math:`\mu_N = -d`, trivial) only :math:`|\mu_2|` is used. ``None`` otherwise;
    * ``num_components`` (connected components of the support graph), ``method``
      (``"dense"``, ``"factor"``, ``"lobpcg"``, or ``"disconnected"``) and ``converged`` (False
      only when LOBPCG missed its tolerance; a warning is issued and ``lambda_2`` is then an
      upper bound, a Ritz value).

    Solvers (details in ``_Solver``): ``N <= dense_limit`` uses ``numpy.linalg.eigvalsh``.
    Larger graphs that are a band plus a few hubs after a reverse Cuthill-McKee ordering (band,
    dilated, Star-Transformer, ETC, Longformer) use a sparse factorisation: Lanczos on the
    grounded-Laplacian inverse for ``lambda_2`` and bisection on positive definiteness for
    ``lambda_max``, accurate to ~1e-11 however small ``lambda_2`` is (``O(N (b + h)^2)`` per
    factorisation, bandwidth ``b``, hubs ``h``). Others (expanders, BigBird, BP-Transformer)
    use ARPACK for ``lambda_max`` and Jacobi-preconditioned LOBPCG for ``lambda_2``
    (``O(E)`` per iteration, relative accuracy 1e-4 or better, checked by the residual).

    >>> from graphattn import rules
    >>> s = spectral(rules.full(6))
    >>> round(s["lambda_2"], 6), round(s["lambda_max"], 6), round(s["epsilon"], 6), round(s["ramanujan_ratio"], 6)
    (6.0, 6.0, 0.0, 0.25)
    >>> spectral(rules.block_local(8, block_size=4))["kappa"]
    inf
    """
    g = check_graph("g", g)
    dense_limit = check_int("dense_limit", dense_limit, minimum=2)
    n = g.num_nodes
    if n < 2:
        raise ValueError(f"expected a graph with at least 2 nodes for a spectrum, got {n}")
    A = _support(g)
    deg = np.asarray(A.sum(axis=1)).ravel()
    ncomp = int(connected_components(A, directed=False)[0])
    regular = int(deg[0]) if np.all(deg == deg[0]) else None
    if ncomp > 1:
        # lambda_2 = 0 exactly; lambda_max is the largest over the components' Laplacians.
        if deg.max() == 0:
            return _result(0.0, 0.0, 0.0, regular, ncomp, "disconnected", True)
        solver = _Solver(A, deg, dense_limit)
        with _one_blas_thread():
            lmax = solver.lambda_max(False)
        return _result(0.0, lmax, 0.0, regular, ncomp, "disconnected", True)
    solver = _Solver(A, deg, dense_limit)
    with _one_blas_thread():
        lmax = solver.lambda_max(False)
        lam2 = solver.lambda_2(False, lmax)
        if regular is not None:
            gap = lam2 / regular  # the normalised Laplacian of a d-regular graph is L / d
        else:
            gap = solver.lambda_2(True, 2.0)  # normalised spectra lie in [0, 2]
    return _result(lam2, lmax, gap, regular, ncomp, solver.method, solver.converged)


def _result(lam2, lmax, gap, regular, ncomp, method, converged) -> dict:
    lam2 = max(lam2, 0.0) if ncomp == 1 else 0.0
    if lam2 > 0:
        eps = (lmax - lam2) / (lmax + lam2)
        kappa = lmax / lam2
    else:
        eps, kappa = 1.0, math.inf
    ratio = None
    if regular is not None and regular >= 2 and ncomp == 1:
        mu2, mu_min = regular - lam2, regular - lmax
        bipartite = abs(mu_min + regular) <= 1e-6 * regular
        mu = abs(mu2) if bipartite else max(abs(mu2), abs(mu_min))
        ratio = mu / (2.0 * math.sqrt(regular - 1))
    return {
        "lambda_2": lam2,
        "lambda_max": lmax,
        "epsilon": eps,
        "kappa": kappa,
        "normalized_gap": max(gap, 0.0) if ncomp == 1 else 0.0,
        "degree": regular,
        "ramanujan_ratio": ratio,
        "num_components": ncomp,
        "method": method,
        "converged": converged,
    }
