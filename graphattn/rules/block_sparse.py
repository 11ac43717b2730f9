"""BigBird (Zaheer et al., 2020): window + random + global attention at block granularity."""

from __future__ import annotations

import torch

from graphattn._random import sample_without_replacement, seed_key
from graphattn._validate import check_int, check_query_range, renamed_parameters
from graphattn.compose import lift_blocks
from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules._build import COALESCE_BYTES, check_edges, coalesce
from graphattn.rules.globals import global_nodes, global_tokens
from graphattn.rules.position import band

__all__ = ["bigbird", "bigbird_etc", "random_key_blocks"]

# Peak bytes per token edge: the lifted edge list and labels (BigBird-ETC: then its union with the
# global nodes, one more edge list).
_BIGBIRD_ETC_BYTES = 75


def random_key_blocks(num_blocks: int, *, count: int, exclude: torch.Tensor, seed=None,
                      queries: range | None = None) -> AttentionGraph:
    """BigBird's random part over blocks: each query block ``I`` attends ``count`` key blocks
    drawn uniformly without replacement
    among the blocks not listed in row ``I`` of ``exclude`` (``[num_blocks, m]`` block ids, values
    ``>= num_blocks`` are padding). Where fewer blocks remain, the row attends all of them.
    Rows are drawn independently from ``(seed, I)``, so a query range builds exactly its rows.
    """
    start, stop = check_query_range(queries, num_blocks)
    key = seed_key(seed)
    rows = torch.arange(start, stop)
    excl = exclude[start:stop]
    # Sorted, duplicate-free exclusion lists (padding pushed to the end).
    excl = torch.sort(excl, dim=1).values
    dup = torch.zeros_like(excl, dtype=torch.bool)
    dup[:, 1:] = excl[:, 1:] == excl[:, :-1]
    excl = torch.sort(torch.where(dup | (excl >= num_blocks), num_blocks, excl), dim=1).values
    avail = num_blocks - (excl < num_blocks).sum(dim=1)
    full_rows = avail >= count
    # Rows with enough candidates: Floyd-sample a rank among the available blocks, then map the
    # rank t to the t-th non-excluded block by stepping over the sorted exclusions.
    picks = sample_without_replacement(key, rows[full_rows], avail[full_rows], count)
    for c in range(excl.shape[1]):
        e = excl[full_rows, c : c + 1]
        picks = picks + (e <= picks).long()
    q_full = rows[full_rows].repeat_interleave(count)
    # Rows with too few candidates (short sequences only): take every remaining block.
    short = rows[~full_rows]
    ex = excl[~full_rows]
    allowed = ~(torch.arange(num_blocks)[None, :, None] == ex[:, None, :]).any(dim=2)
    s_q, s_k = allowed.nonzero(as_tuple=True)
    key_ = torch.cat([picks.reshape(-1), s_k])
    query = torch.cat([q_full, short[s_q]])
    return coalesce(key_, query, num_blocks, label=EdgeLabel.RANDOM)


def _check_common(n, block_size, num_window_blocks, num_random_blocks):
    n = check_int("n", n, minimum=0)
    block_size = check_int("block_size", block_size, minimum=1)
    num_window_blocks = check_int("num_window_blocks", num_window_blocks, minimum=1)
    if num_window_blocks % 2 == 0:
        raise ValueError(f"expected num_window_blocks to be odd (a centred window), got {num_window_blocks}")
    num_random_blocks = check_int("num_random_blocks", num_random_blocks, minimum=0)
    return n, block_size, num_window_blocks, num_random_blocks


_BIGBIRD_RENAMES = dict(block="block_size", window_blocks="num_window_blocks", random_blocks="num_random_blocks")


def _window_exclusions(rows: torch.Tensor, radius: int) -> torch.Tensor:
    # rows are block ids in [0, nb): offsets of nb or more land outside and are padding anyway, so
    # a window wider than the sequence costs no memory in its width (same draws, tested).
    radius = min(radius, rows.numel())
    return rows[:, None] + torch.arange(-radius, radius + 1)


@renamed_parameters(**_BIGBIRD_RENAMES, global_blocks="num_global_blocks")
def bigbird(n: int, *, block_size: int = 64, num_window_blocks: int = 3, num_random_blocks: int = 3,
            num_global_blocks: int = 2, seed=None, queries: range | None = None) -> AttentionGraph:
    """BigBird-ITC block-sparse attention, built as what it is: a union of a band, a global and a
    random graph over blocks of ``block_size`` tokens, lifted to tokens.

    Blocks: ``B = ceil(n / block_size)`` (the last may be partial). Global blocks: the first
    ``ceil(g/2)`` and the last ``floor(g/2)`` (``g = num_global_blocks``; the default 2 gives the
    first and last block, as in the reference); they attend every block and every block attends
    them. Every other query block ``I`` attends the ``num_window_blocks`` blocks centred on it
    and ``num_random_blocks`` blocks drawn among the blocks it does not already attend. Keys per
    query in a middle block: ``(num_window_blocks + num_random_blocks + num_global_blocks) *
    block_size`` (8 blocks, 512 keys at the defaults); a global row attends all ``n``. A
    sequence of at most ``num_window_blocks + num_random_blocks + num_global_blocks`` blocks is
    full attention (each block's random blocks are then all the blocks it does not otherwise
    attend), as the reference falls back to full attention for short inputs.

    >>> g = bigbird(16 * 8, block_size=8, seed=0)
    >>> int(g.keys_per_query()[8 * 8])
    64
    """
    n, block_size, num_window_blocks, num_random_blocks = _check_common(
        n, block_size, num_window_blocks, num_random_blocks)
    num_global_blocks = check_int("num_global_blocks", num_global_blocks, minimum=0)
    start, stop = check_query_range(queries, n)
    nb = -(-n // block_size)
    # The token edges are built only when read (a lifted graph); here the block graph is built.
    q_blocks = -(-(stop - start) // block_size) + 1 if stop > start else 0
    check_edges(f"rules.bigbird(n={n}, block_size={block_size}): its block graph",
                q_blocks * (num_window_blocks + num_random_blocks + num_global_blocks) + num_global_blocks * nb,
                COALESCE_BYTES)
    brange = range(start // block_size, -(-stop // block_size)) if stop > start else range(0, 0)
    first = list(range(min(-(-num_global_blocks // 2), nb)))
    last = list(range(max(nb - num_global_blocks // 2, 0), nb))
    glob_ids = torch.tensor(sorted(set(first + last)), dtype=torch.int64)
    radius = (num_window_blocks - 1) // 2
    all_rows = torch.arange(nb)
    exclude = torch.cat([_window_exclusions(all_rows, radius), glob_ids.expand(nb, -1)], dim=1)
    is_glob = torch.zeros(nb, dtype=torch.bool)
    is_glob[glob_ids] = True
    exclude = torch.where(exclude < 0, nb, exclude)
    count = nb if nb <= num_window_blocks + num_random_blocks + num_global_blocks else num_random_blocks
    blocks = (band(nb, radius=radius, queries=brange)
              | global_tokens(nb, global_indices=glob_ids, queries=brange)
              | _random_rows(nb, count, exclude, is_glob, seed, brange))
    return lift_blocks(blocks, block_size=block_size, num_tokens=n, queries=queries)


def _random_rows(nb, count, exclude, skip_rows, seed, brange) -> AttentionGraph:
    """Random block edges for the rows not in ``skip_rows`` (global rows already attend all)."""
    g = random_key_blocks(nb, count=count, exclude=exclude, seed=seed, queries=brange)
    return g._select(~skip_rows[g.edge_index[1]])


@renamed_parameters(**_BIGBIRD_RENAMES)
def bigbird_etc(n: int, *, block_size: int = 64, num_window_blocks: int = 3, num_random_blocks: int = 3,
                num_global: int = 2, seed=None, queries: range | None = None) -> AttentionGraph:
    """BigBird-ETC: the window and random blocks of :func:`bigbird` over the tokens, plus
    ``num_global`` appended global nodes (ETC construction, type GLOBAL) that attend every node
    and are attended by every token.

    Keys per query in a middle block: ``(num_window_blocks + num_random_blocks) * block_size +
    num_global``. A sequence of at most ``num_window_blocks + num_random_blocks`` blocks is full
    attention.

    >>> g = bigbird_etc(16 * 8, block_size=8, num_global=2, seed=0)
    >>> g.num_nodes, int(g.keys_per_query()[8 * 8])
    (130, 50)
    """
    n, block_size, num_window_blocks, num_random_blocks = _check_common(
        n, block_size, num_window_blocks, num_random_blocks)
    num_global = check_int("num_global", num_global, minimum=0)
    total = n + num_global
    start, stop = check_query_range(queries, total)
    tok = range(min(start, n), min(stop, n))
    per_row = min((num_window_blocks + num_random_blocks) * block_size, n) + num_global
    check_edges(f"rules.bigbird_etc(n={n}, block_size={block_size}, num_global={num_global})",
                len(tok) * per_row + (max(stop, n) - max(start, n)) * total, _BIGBIRD_ETC_BYTES)
    nb = -(-n // block_size)
    brange = (range(tok.start // block_size, -(-tok.stop // block_size)) if tok.stop > tok.start
              else range(0, 0))
    radius = (num_window_blocks - 1) // 2
    exclude = _window_exclusions(torch.arange(nb), radius)
    exclude = torch.where(exclude < 0, nb, exclude)
    count = nb if nb <= num_window_blocks + num_random_blocks else num_random_blocks
    blocks = band(nb, radius=radius, queries=brange) | _random_rows(
        nb, count, exclude, torch.zeros(nb, dtype=torch.bool), seed, brange)
    local = lift_blocks(blocks, block_size=block_size, num_tokens=n, queries=tok)
    return (local.add_nodes(num_global, node_type=NodeType.GLOBAL)
            | global_nodes(n, num_global=num_global, queries=queries))
