"""Random attention: r random keys per query, Erdos-Renyi, random regular expanders.

Every draw is a counter-based hash of ``(seed, query row, counter)`` (:mod:`graphattn._random`),
so a query range builds exactly its rows of the full graph, and CPU and GPU agree.
"""

from __future__ import annotations

import math

import torch

from graphattn._random import hash_uniform, seed_key, sorted_sample_without_replacement
from graphattn._validate import check_float, check_int, check_query_range, renamed_parameters
from graphattn._edge_sets import exclusive_cumsum
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import COALESCE_BYTES, check_edges, coalesce, token_types

__all__ = ["random", "erdos_renyi", "random_regular"]

# Peak bytes per edge (measured with the profiler's allocation trace; see tests/rules/test_memory.py):
# random keeps the draws, their sort and the output; erdos_renyi a chunk of hashes, skips and
# positions per edge.
_RANDOM_BYTES, _ERDOS_BYTES, _NETWORKX_BYTES = 80, 120, 600


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
    num_edges = (stop - start) * (r + 1)
    check_edges(f"rules.random(n={n}, num_random_keys={r})", num_edges, _RANDOM_BYTES)
    rows = torch.arange(start, stop)
    picks = sorted_sample_without_replacement(seed_key(seed), rows, n - 1, r)
    picks += picks >= rows[:, None]  # skip the query itself: increasing, so the rows stay sorted
    # Insert the self-loop at its place in each sorted row: column c takes picks[c] before it,
    # the query at it, picks[c - 1] after it.
    at = (picks < rows[:, None]).sum(dim=1, keepdim=True)
    col = torch.arange(r + 1)
    src = (col - (col > at).long()).clamp_max_(max(r - 1, 0))
    keys = torch.where(col == at, rows[:, None], picks.gather(1, src) if r else rows[:, None])
    edge_index = torch.empty(2, num_edges, dtype=torch.int64)
    edge_index[0].view(-1, r + 1).copy_(keys)
    edge_index[1].view(-1, r + 1).copy_(rows[:, None].expand(-1, r + 1))
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
    expected = (stop - start) * (1 + (n - 1) * p)  # the self-loops and per-row arrays count too
    check_edges(f"rules.erdos_renyi(n={n}, p={p})", int(expected * 1.05) + 64, _ERDOS_BYTES)
    rows = torch.arange(start, stop)
    owner, step, keys, one_chunk = _geometric_skips(seed_key(seed), rows, n, p)
    # Each row's keys come in increasing order of step; the self-loop goes in between, after the
    # keys below the query: every edge's output position is known without a sort.
    query = owner + start
    after_loop = (keys > query).long()
    per_row = torch.bincount(owner, minlength=rows.numel())
    below = per_row - torch.zeros_like(per_row).index_add_(0, owner, after_loop)
    if one_chunk:  # edges come row by row: edge e is preceded by its row's and earlier rows' loops
        pos = torch.arange(keys.numel()) + owner + after_loop
        ptr_rows = exclusive_cumsum(per_row)[:-1] + torch.arange(rows.numel())
    else:
        ptr = exclusive_cumsum(per_row + 1)
        pos = ptr[owner] + step + after_loop
        ptr_rows = ptr[:-1]
    loop = ptr_rows + below
    edge_index = torch.empty(2, keys.numel() + rows.numel(), dtype=torch.int64)
    edge_index[0, pos] = keys
    edge_index[1, pos] = query
    edge_index[0, loop] = rows
    edge_index[1, loop] = rows
    return AttentionGraph._trusted(edge_index, n, token_types(n), EdgeLabel.RANDOM)


def _geometric_skips(key: int, rows: torch.Tensor, n: int, p: float):
    """The non-self keys of each row: ``(owner, step, key, one_chunk)`` with ``owner`` an index
    into ``rows`` and ``step`` the key's rank in its row. Step ``s`` of row ``i`` skips
    ``floor(log(u) / log(1 - p))`` candidates, ``u`` from the hash of ``(seed, i, s)``. A chunk of
    steps is drawn per call (a step's draw does not depend on the previous ones), and only the
    rows still short of the end take another chunk; ``one_chunk`` says the first was enough, so
    the edges are listed row by row."""
    owner, steps, keys = [], [], []
    empty = torch.empty(0, dtype=torch.int64)
    if p == 0.0 or n <= 1:
        return empty, empty, empty, True
    log_q = math.log1p(-p) if p < 1.0 else -math.inf
    chunk = min(n, int(1.1 * (n - 1) * p) + 8)  # about the mean keys per row, plus a margin
    cur = torch.full((rows.numel(), 1), -1)  # last chosen candidate index per row, in [0, n-1)
    active = torch.arange(rows.numel())
    first = 0
    while active.numel():
        bits = hash_uniform(key, (active + rows[0])[:, None], torch.arange(first, first + chunk))
        if p == 1.0:
            gap = torch.zeros_like(bits)
        else:
            u = bits.double().add_(0.5).div_(2.0**32).log_().div_(log_q)
            gap = u.floor_().clamp_max_(n).long()
        nxt = torch.cumsum(gap.add_(1), dim=1).add_(cur if first == 0 else cur[active])
        ok = nxt < n - 1  # a prefix of every row: candidates only grow
        k = nxt[ok]
        count = ok.sum(dim=1)
        who = active.repeat_interleave(count, output_size=k.numel())
        owner.append(who)
        steps.append(torch.arange(k.numel()) - exclusive_cumsum(count)[:-1].repeat_interleave(
            count, output_size=k.numel()) + first)
        keys.append(k.add_(k >= who + rows[0]))  # candidate index -> key, skipping the query itself
        more = ok[:, -1]
        cur[active[more]] = nxt[more, -1:]
        active = active[more]
        first += chunk
    return (torch.cat(owner), torch.cat(steps), torch.cat(keys), len(keys) == 1) if keys else (empty, empty, empty, True)


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
    # networkx's graph of dicts holds each undirected edge twice, at a few hundred bytes each
    check_edges(f"rules.random_regular(n={n}, degree={degree})", n * (degree + 1), _NETWORKX_BYTES)
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
