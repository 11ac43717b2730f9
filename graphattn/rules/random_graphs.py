"""Random attention: r random keys per query, Erdos-Renyi, random regular expanders.

Every draw is a counter-based hash of ``(seed, query row, counter)`` (:mod:`graphattn._random`),
so a query range builds exactly its rows of the full graph, and CPU and GPU agree.
"""

from __future__ import annotations

import math

import torch

from graphattn._random import hash_uniform, sample_without_replacement, seed_key
from graphattn._validate import check_float, check_int, check_query_range, renamed_parameters
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import coalesce, token_types

__all__ = ["random", "erdos_renyi", "random_regular"]


@renamed_parameters(keys_per_query="num_random_keys")
def random(n: int, *, num_random_keys: int, seed=None, queries: range | None = None) -> AttentionGraph:
    """Random attention (BigBird, Zaheer et al., 2020): each query ``i`` attends
    ``num_random_keys`` distinct keys drawn uniformly without replacement among the other
    ``n - 1`` tokens, plus itself.

    Keys per query: ``num_random_keys + 1``. Requires ``num_random_keys <= n - 1``.

    >>> g = random(6, num_random_keys=2, seed=0)
    >>> g.keys_per_query().tolist()
    [3, 3, 3, 3, 3, 3]
    >>> g.equals(random(6, num_random_keys=2, seed=0))
    True
    """
    n = check_int("n", n, minimum=0)
    r = check_int("num_random_keys", num_random_keys, minimum=0)
    if r > max(n - 1, 0):
        raise ValueError(f"expected num_random_keys <= n - 1 = {max(n - 1, 0)} (other tokens available), got {r}")
    start, stop = check_query_range(queries, n)
    key = seed_key(seed)
    rows = torch.arange(start, stop)
    picks = sample_without_replacement(key, rows, n - 1, r)
    picks = picks + (picks >= rows[:, None]).long()  # skip the query itself
    keys = torch.sort(torch.cat([picks, rows[:, None]], dim=1), dim=1).values
    edge_index = torch.stack([keys.reshape(-1), rows.repeat_interleave(r + 1)])
    return AttentionGraph._trusted(edge_index, n, token_types(n), EdgeLabel.RANDOM)


def erdos_renyi(n: int, *, p: float, seed=None, queries: range | None = None) -> AttentionGraph:
    """Erdos-Renyi attention: each ordered pair ``(i, j)``, ``i != j``, is an edge independently
    with probability ``p``; every token keeps its self-loop.

    Keys per query: ``1 + Binomial(n - 1, p)``, mean ``1 + (n - 1) p``. Built by geometric skips
    per row (O(edges) work, never O(n^2) for small ``p``).

    >>> erdos_renyi(5, p=1.0).num_edges, erdos_renyi(5, p=0.0).num_edges
    (25, 5)
    """
    n = check_int("n", n, minimum=0)
    p = check_float("p", p, minimum=0.0, maximum=1.0)
    start, stop = check_query_range(queries, n)
    key = seed_key(seed)
    rows = torch.arange(start, stop)
    keys, owners = [rows], [rows]
    if p > 0.0 and n > 1:
        log_q = math.log1p(-p) if p < 1.0 else -math.inf
        cur = torch.full_like(rows, -1)  # last chosen candidate index per row, in [0, n-1)
        active = torch.arange(rows.numel())
        step = 0
        while active.numel():
            u = (hash_uniform(key, rows[active], step).double() + 0.5) / 2.0**32
            gap = torch.zeros_like(u) if p == 1.0 else torch.floor(torch.log(u) / log_q)
            nxt = cur[active] + 1 + gap.clamp_max(n).long()
            ok = nxt < n - 1
            active, nxt = active[ok], nxt[ok]
            cur[active] = nxt
            r = rows[active]
            keys.append(nxt + (nxt >= r).long())
            owners.append(r)
            step += 1
    return coalesce(torch.cat(keys), torch.cat(owners), n, label=EdgeLabel.RANDOM)


def random_regular(n: int, *, degree: int, seed=None, queries: range | None = None) -> AttentionGraph:
    """Random ``degree``-regular expander (Exphormer, Shirzad et al., 2023; BigBird's expander
    argument): a uniformly random simple undirected ``degree``-regular graph, both directions as
    edges, plus every self-loop.

    Keys per query: exactly ``degree + 1``. Requires ``degree < n`` and ``n * degree`` even.
    Sampled by networkx's ``random_regular_graph`` (Steger-Wormald), seeded from ``seed``. A
    uniformly random regular graph is a global object: ``queries`` slices the full graph.

    >>> random_regular(6, degree=3, seed=1).keys_per_query().tolist()
    [4, 4, 4, 4, 4, 4]
    """
    import networkx as nx

    n = check_int("n", n, minimum=0)
    degree = check_int("degree", degree, minimum=0)
    if n and degree >= n:
        raise ValueError(f"expected degree < n = {n}, got {degree}")
    if (n * degree) % 2:
        raise ValueError(f"expected n * degree even for a regular graph, got n={n}, degree={degree}")
    start, stop = check_query_range(queries, n)
    if n == 0:
        return coalesce(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), 0,
                        label=EdgeLabel.RANDOM)
    G = nx.random_regular_graph(degree, n, seed=seed_key(seed))
    pairs = torch.tensor(list(G.edges()), dtype=torch.int64).reshape(-1, 2).t()
    loops = torch.arange(n)
    key = torch.cat([pairs[0], pairs[1], loops])
    query = torch.cat([pairs[1], pairs[0], loops])
    g = coalesce(key, query, n, label=EdgeLabel.RANDOM)
    return g if (start, stop) == (0, n) else g.query_slice(start, stop)
