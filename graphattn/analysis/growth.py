r"""How a rule's edge count grows with the sequence length: O(n), O(n log n) or O(n^2).

The point of sparse attention is the cost: full attention has ``n^2`` edges, a band, BigBird,
Longformer, ETC or the Star-Transformer ``O(n)`` (a constant number of keys per token), the
BP-Transformer ``O(n log n)`` (``~2k log2(n/k)`` keys per token; Ye et al., 2019), and Yun et
al. (2020) show ``O(n)`` connections per layer already suffice for universal approximation.
:func:`scaling` measures the growth by building the rule at several lengths.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from graphattn._validate import check_int
from graphattn.analysis._common import check_graph

__all__ = ["scaling"]

_MODELS = {
    "O(n)": lambda n: n,
    "O(n log n)": lambda n: n * np.log(n),
    "O(n^2)": lambda n: n * n,
}


def scaling(rule: Callable, ns: Iterable[int]) -> dict:
    r"""Edges and keys per query of ``rule(n)`` for each ``n`` in ``ns``, with the growth law.

    Args:
        rule: a callable ``n -> AttentionGraph`` (e.g. ``lambda n: rules.band(n, radius=4)``).
        ns: at least two distinct sequence lengths ``>= 2``; the wider their range (a factor of
            16 or more), the surer the label.

    Returns a dict:

    * ``ns`` (sorted), ``edges``, ``keys_per_query`` (mean over nodes that attend at least one
      key), ``edges_per_token`` (``edges / num_tokens``), lists aligned with ``ns``;
    * ``exponent``: the least-squares slope of ``log edges`` against ``log n`` (1 for ``O(n)``,
      slightly above 1 for ``O(n log n)``, 2 for ``O(n^2)``);
    * ``label``: ``"O(n)"``, ``"O(n log n)"`` or ``"O(n^2)"``, the growth model ``c f(n)`` whose
      least-squares fit of ``log edges`` (one free constant ``log c``) leaves the smallest
      residual; ``residuals`` holds each model's root-mean-square residual.

    >>> from graphattn import rules
    >>> s = scaling(lambda n: rules.band(n, radius=2), [64, 256, 1024, 4096])
    >>> s["label"], round(s["exponent"], 2)
    ('O(n)', 1.0)
    >>> scaling(rules.full, [16, 32, 64, 128])["label"]
    'O(n^2)'
    """
    if not callable(rule):
        raise TypeError(f"expected rule to be a callable n -> AttentionGraph, got {type(rule).__name__}")
    if isinstance(ns, (str, bytes)) or not hasattr(ns, "__iter__"):
        raise TypeError(f"expected ns to be a sequence of ints, got {type(ns).__name__}")
    ns = list(ns)
    sizes = sorted({check_int(f"ns[{p}]", n, minimum=2) for p, n in enumerate(ns)})
    if len(sizes) < 2:
        raise ValueError(f"expected at least two distinct lengths in ns, got {list(ns)}")
    edges, kpq, ept = [], [], []
    for n in sizes:
        g = check_graph(f"rule({n})", rule(n))
        deg = g.keys_per_query()
        queries = deg[deg > 0]
        edges.append(g.num_edges)
        kpq.append(float(queries.double().mean()) if queries.numel() else 0.0)
        ept.append(g.num_edges / g.num_tokens if g.num_tokens else math.inf)
    if min(edges) <= 0:
        raise ValueError(f"expected rule(n) to have edges at every n to fit a growth law, got {edges}")
    x = np.log(np.asarray(sizes, dtype=np.float64))
    y = np.log(np.asarray(edges, dtype=np.float64))
    slope = float(np.polyfit(x, y, 1)[0])
    residuals = {}
    for name, f in _MODELS.items():
        r = y - np.log(f(np.asarray(sizes, dtype=np.float64)))
        residuals[name] = float(np.sqrt(np.mean((r - r.mean()) ** 2)))
    label = min(residuals, key=residuals.get)
    return {
        "ns": sizes,
        "edges": edges,
        "keys_per_query": kpq,
        "edges_per_token": ept,
        "exponent": slope,
        "label": label,
        "residuals": residuals,
    }
