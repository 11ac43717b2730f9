"""Global attention: chosen existing tokens (ITC) or appended global nodes (ETC)."""

from __future__ import annotations

from typing import Sequence

import torch

from graphattn._validate import check_index_list, check_int, check_query_range, renamed_parameters
from graphattn.graph import AttentionGraph, EdgeLabel
from graphattn.rules._build import COALESCE_BYTES, check_edges, coalesce, global_node_types

__all__ = ["global_tokens", "global_nodes"]


@renamed_parameters(indices="global_indices")
def global_tokens(n: int, *, global_indices: Sequence[int], queries: range | None = None) -> AttentionGraph:
    """Internal transformer construction (ITC; Longformer, BigBird): the chosen tokens attend
    every token and are attended by every token; every token keeps its self-loop.

    Edge set: ``i`` attends ``j`` iff ``i`` or ``j`` is in ``global_indices``, or ``i == j``.
    Keys per query: ``n`` for a global row, ``g + 1`` elsewhere (``g = len(global_indices)``).

    >>> global_tokens(4, global_indices=[0]).keys_per_query().tolist()
    [4, 2, 2, 2]
    """
    n = check_int("n", n, minimum=0)
    glob = check_index_list("global_indices", global_indices, size=n)
    start, stop = check_query_range(queries, n)
    g_rows = int(((glob >= start) & (glob < stop)).sum())
    check_edges(f"rules.global_tokens(n={n}, {glob.numel()} global_indices)",
                (stop - start - g_rows) * (glob.numel() + 1) + g_rows * n, COALESCE_BYTES)
    rows = torch.arange(start, stop)
    is_glob = torch.zeros(n, dtype=torch.bool)
    is_glob[glob] = True
    plain = rows[~is_glob[rows]]
    g_rows = rows[is_glob[rows]]
    # Plain rows: the globals plus the row itself; global rows: every token.
    key = torch.cat([
        torch.cat([glob.expand(plain.numel(), -1), plain[:, None]], dim=1).reshape(-1),
        torch.arange(n).repeat(g_rows.numel()),
    ])
    query = torch.cat([plain.repeat_interleave(glob.numel() + 1), g_rows.repeat_interleave(n)])
    return coalesce(key, query, n, label=EdgeLabel.GLOBAL)


@renamed_parameters(count="num_global")
def global_nodes(n: int, *, num_global: int, queries: range | None = None) -> AttentionGraph:
    """Extended transformer construction (ETC; Ainslie et al., 2020; BigBird-ETC): ``num_global``
    new global nodes ``n .. n+num_global-1`` (type GLOBAL) attend every node and are attended by every
    token; every token keeps its self-loop.

    Keys per query: ``num_global + 1`` for a token, ``n + num_global`` for a global node.

    >>> g = global_nodes(3, num_global=1)
    >>> g.num_nodes, g.keys_per_query().tolist()
    (4, [2, 2, 2, 4])
    """
    n = check_int("n", n, minimum=0)
    count = check_int("num_global", num_global, minimum=0)
    total = n + count
    start, stop = check_query_range(queries, total)
    num_tok, num_glob = max(min(stop, n) - min(start, n), 0), max(max(stop, n) - max(start, n), 0)
    check_edges(f"rules.global_nodes(n={n}, num_global={count})", num_tok * (count + 1) + num_glob * total, 40)
    tok = torch.arange(min(start, n), min(stop, n))
    glob_rows = torch.arange(max(start, n), max(stop, n))
    # Token rows: self-loop, then the globals (all > n > token): already sorted.
    tok_keys = torch.cat([tok[:, None], torch.arange(n, total).expand(tok.numel(), -1)], dim=1)
    key = torch.cat([tok_keys.reshape(-1), torch.arange(total).repeat(glob_rows.numel())])
    query = torch.cat([tok.repeat_interleave(count + 1), glob_rows.repeat_interleave(total)])
    return AttentionGraph._trusted(torch.stack([key, query]), total, global_node_types(n, count), EdgeLabel.GLOBAL)
