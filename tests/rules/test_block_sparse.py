"""Tests for graphattn.rules.bigbird: BigBird-ITC and BigBird-ETC block-sparse attention."""

from __future__ import annotations

import itertools

import pytest
import torch

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import bigbird, bigbird_etc


# ----------------------------------------------------------------------------- helpers
def token_rows(g: AttentionGraph, n: int) -> list[set[int]]:
    rows: list[set[int]] = [set() for _ in range(n)]
    for j, i in zip(*g.edge_index.tolist()):
        if i < n and j < n:
            rows[i].add(j)
    return rows


def block_rows(rows: list[set[int]], n: int, block: int) -> list[set[int]]:
    """Check the block structure and return the key blocks of every query block.

    Every token of a query block has the same key set, and that set is a union of whole key
    blocks (the last block may be partial)."""
    nb = -(-n // block)
    out = []
    for I in range(nb):
        toks = range(I * block, min((I + 1) * block, n))
        first = rows[toks[0]]
        for t in toks:
            assert rows[t] == first, f"tokens {toks[0]} and {t} of block {I} differ"
        blocks = {j // block for j in first}
        whole = set()
        for J in blocks:
            whole.update(range(J * block, min((J + 1) * block, n)))
        assert first == whole, f"block {I} attends a partial key block"
        out.append(blocks)
    return out


def global_block_ids(nb: int, global_blocks: int) -> set[int]:
    return set(range(min(-(-global_blocks // 2), nb))) | set(range(max(nb - global_blocks // 2, 0), nb))


def check_bigbird(g: AttentionGraph, n: int, block: int, window_blocks: int, random_blocks: int,
                  global_blocks: int) -> list[set[int]]:
    """Structural checks of a BigBird-ITC graph; returns each query block's random key blocks."""
    assert g.num_nodes == n and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n
    code = g.edge_index[1] * max(n, 1) + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is None and g.head_mask is None
    nb = -(-n // block)
    radius = (window_blocks - 1) // 2
    glob = global_block_ids(nb, global_blocks)
    kb = block_rows(token_rows(g, n), n, block)
    randoms = []
    for I in range(nb):
        window = {J for J in range(I - radius, I + radius + 1) if 0 <= J < nb}
        assert window <= kb[I], f"block {I} misses window blocks"
        assert glob <= kb[I], f"block {I} misses global blocks"
        if I in glob:
            assert kb[I] == set(range(nb)), f"global block {I} must attend every block"
            randoms.append(set())
            continue
        rand = kb[I] - window - glob
        avail = nb - len(window | glob)
        assert len(rand) == min(random_blocks, avail), (I, rand, avail)
        randoms.append(rand)
    # Labels: window edges BAND, other global edges GLOBAL, the rest RANDOM.
    key, query = g.edge_index
    kb_, qb_ = key // block, query // block
    in_win = (kb_ - qb_).abs() <= radius
    is_glob = torch.zeros(max(nb, 1), dtype=torch.bool)
    is_glob[list(glob)] = True
    touches_glob = is_glob[kb_] | is_glob[qb_]
    want = torch.where(in_win, int(EdgeLabel.BAND),
                       torch.where(touches_glob, int(EdgeLabel.GLOBAL), int(EdgeLabel.RANDOM)))
    assert torch.equal(g.edge_label.long(), want)
    return randoms


# ----------------------------------------------------------------------------- BigBird-ITC
def test_bigbird_default_middle_block_attends_eight_blocks():
    n, block = 64 * 16, 64
    g = bigbird(n, seed=0)
    kpq = g.keys_per_query()
    # middle blocks: 3 window + 3 random + 2 global = 8 blocks = 512 keys
    for I in range(2, 14):
        assert bool((kpq[I * block:(I + 1) * block] == 512).all()), I
    # global blocks (first and last): rows full
    assert bool((kpq[:block] == n).all()) and bool((kpq[-block:] == n).all())
    dense = g.to_dense()
    assert bool(dense[:, :block].all()) and bool(dense[:, -block:].all())  # global columns full
    check_bigbird(g, n, 64, 3, 3, 2)


@pytest.mark.parametrize("n,block,w,r,gb", [
    (4 * 20, 4, 3, 3, 2), (4 * 20 + 3, 4, 3, 3, 2), (3 * 17 + 1, 3, 3, 2, 2), (5 * 13 - 2, 5, 5, 2, 2),
    (2 * 30, 2, 3, 1, 0), (2 * 30 + 1, 2, 1, 3, 1), (4 * 15 + 1, 4, 3, 3, 3), (6 * 12 + 5, 6, 7, 1, 4),
    (1 * 25, 1, 3, 4, 2), (7 * 11, 7, 3, 0, 2),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_bigbird_block_structure(n, block, w, r, gb, seed):
    g = bigbird(n, block_size=block, num_window_blocks=w, num_random_blocks=r, num_global_blocks=gb, seed=seed)
    check_bigbird(g, n, block, w, r, gb)
    assert {(i, i) for i in range(n)} <= set(zip(*g.edge_index.tolist()))


def test_bigbird_partial_last_block_keys_per_query():
    block, nb = 8, 14
    n = block * (nb - 1) + 3  # the last block holds 3 tokens
    g = bigbird(n, block_size=block, seed=4)
    kb = block_rows(token_rows(g, n), n, block)
    kpq = g.keys_per_query().tolist()
    size = lambda J: min(block, n - J * block)  # noqa: E731
    for i in range(n):
        assert kpq[i] == sum(size(J) for J in kb[i // block])
    assert kpq[-1] == n and kpq[-3] == n  # the partial last block is global
    assert kpq[-4] != n


def test_bigbird_random_blocks_vary_and_cover_candidates():
    n, block = 4 * 20, 4
    seen = [set() for _ in range(20)]
    for seed in range(40):
        rand = check_bigbird(bigbird(n, block_size=block, seed=seed), n, block, 3, 3, 2)
        for I, R in enumerate(rand):
            seen[I] |= R
    glob = {0, 19}
    for I in range(1, 19):
        candidates = set(range(20)) - {I - 1, I, I + 1} - glob
        assert seen[I] == candidates, I  # over 40 seeds every candidate block was drawn


@pytest.mark.parametrize("nb", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("block", [1, 4])
def test_bigbird_short_sequences_become_full(nb, block):
    for n in {max(1, (nb - 1) * block + 1), nb * block}:
        g = bigbird(n, block_size=block, seed=3)
        assert -(-n // block) == nb
        assert g.num_edges == n * n and bool(g.to_dense().all())


@pytest.mark.parametrize("w,r,gb", [(3, 3, 2), (3, 1, 0), (3, 2, 3), (5, 2, 2), (5, 0, 0), (7, 1, 2)])
def test_bigbird_fewer_blocks_than_attended_is_full(w, r, gb):
    # Documented: with fewer blocks than window + random + global, rows attend every block.
    for nb in range(1, w + r + gb):
        g = bigbird(nb * 2, block_size=2, num_window_blocks=w, num_random_blocks=r, num_global_blocks=gb, seed=0)
        assert bool(g.to_dense().all()), f"not full at {nb} blocks (window {w}, random {r}, global {gb})"


def test_bigbird_not_full_beyond_short():
    g = bigbird(4 * 9, block_size=4, seed=0)  # 9 blocks: middle blocks attend 8 of them
    assert not bool(g.to_dense().all())
    assert int(g.keys_per_query()[4 * 4]) == 8 * 4


@pytest.mark.parametrize("n", [0, 1, 2, 5, 63, 64, 65])
def test_bigbird_small_n(n):
    g = bigbird(n, seed=0)
    assert g.num_nodes == n and g.num_edges == n * n


def test_bigbird_docstring_example():
    assert int(bigbird(16 * 8, block_size=8, seed=0).keys_per_query()[8 * 8]) == 64


def test_bigbird_seeds():
    make = lambda seed: bigbird(4 * 24 + 1, block_size=4, seed=seed)  # noqa: E731
    assert make(5).equals(make(5))
    graphs = [make(s) for s in range(4)]
    for a, b in itertools.combinations(graphs, 2):
        assert not a.equals(b)
    assert make(torch.Generator().manual_seed(9)).equals(make(torch.Generator().manual_seed(9)))
    state = torch.get_rng_state()
    make(1)
    assert torch.equal(torch.get_rng_state(), state)
    make(None)  # torch's default generator


def test_bigbird_no_random_is_window_plus_global():
    from graphattn.compose import lift_blocks
    from graphattn.rules import band, global_tokens

    n, block = 4 * 12 + 2, 4
    nb = -(-n // block)
    g = bigbird(n, block_size=block, num_random_blocks=0, seed=0)
    blocks = band(nb, radius=1) | global_tokens(nb, global_indices=[0, nb - 1])
    assert g.equals(lift_blocks(blocks, block_size=block, num_tokens=n))


# ----------------------------------------------------------------------------- BigBird-ETC
@pytest.mark.parametrize("n,block,w,r,ng", [
    (16 * 8, 8, 3, 3, 2), (4 * 20 + 3, 4, 3, 3, 1), (3 * 11, 3, 5, 2, 0), (2 * 9 + 1, 2, 1, 2, 3),
])
def test_bigbird_etc_structure(n, block, w, r, ng):
    g = bigbird_etc(n, block_size=block, num_window_blocks=w, num_random_blocks=r, num_global=ng, seed=2)
    total = n + ng
    assert g.num_nodes == total and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n + [int(NodeType.GLOBAL)] * ng
    code = g.edge_index[1] * total + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    dense = g.to_dense()
    assert bool(dense[:, n:].all())     # every node attends every global node
    assert bool(dense[n:, :].all())     # global nodes attend every node
    nb = -(-n // block)
    radius = (w - 1) // 2
    kb = block_rows(token_rows(g, n), n, block)
    kpq = g.keys_per_query().tolist()
    size = lambda J: min(block, n - J * block)  # noqa: E731
    for I in range(nb):
        window = {J for J in range(I - radius, I + radius + 1) if 0 <= J < nb}
        assert window <= kb[I]
        rand = kb[I] - window
        assert len(rand) == min(r, nb - len(window))
        for t in range(I * block, min((I + 1) * block, n)):
            assert kpq[t] == sum(size(J) for J in kb[I]) + ng
    assert kpq[n:] == [total] * ng
    # labels: token-token window BAND, random RANDOM, anything touching a global node GLOBAL
    key, query = g.edge_index
    tok = (key < n) & (query < n)
    win = tok & ((key // block - query // block).abs() <= radius)
    lab = g.edge_label.long()
    assert bool((lab[win] == int(EdgeLabel.BAND)).all())
    assert bool((lab[tok & ~win] == int(EdgeLabel.RANDOM)).all())
    assert bool((lab[~tok] == int(EdgeLabel.GLOBAL)).all())


def test_bigbird_etc_middle_block_counts():
    n, block = 16 * 8, 8
    g = bigbird_etc(n, block_size=block, num_global=2, seed=0)
    assert g.num_nodes == 130
    kpq = g.keys_per_query()
    for I in range(1, 15):
        assert bool((kpq[I * block:(I + 1) * block] == (3 + 3) * block + 2).all())
    # the default-size middle block: (3 + 3) * 64 + 2
    g64 = bigbird_etc(64 * 12, num_global=2, seed=0)
    assert int(g64.keys_per_query()[64 * 6]) == 6 * 64 + 2


def test_bigbird_etc_seeds_and_small():
    make = lambda seed: bigbird_etc(4 * 15, block_size=4, num_global=2, seed=seed)  # noqa: E731
    assert make(3).equals(make(3))
    assert not make(3).equals(make(4))
    for n in (0, 1, 3):
        g = bigbird_etc(n, block_size=4, num_global=2, seed=0)
        assert g.num_nodes == n + 2 and g.num_edges == (n + 2) ** 2


def test_bigbird_random_blocks_uniform_over_candidates():
    # block=1 and 12 blocks: block 6 draws 3 of the 7 blocks outside its window and the globals.
    nb, seeds, r = 12, range(400), 3
    counts = {J: 0 for J in range(nb)}
    for s in seeds:
        g = bigbird(nb, block_size=1, seed=s)
        for J in g.edge_index[0, (g.edge_index[1] == 6) & (g.edge_label == int(EdgeLabel.RANDOM))].tolist():
            counts[J] += 1
    candidates = [J for J in range(nb) if J not in (0, 5, 6, 7, nb - 1)]
    assert all(counts[J] == 0 for J in counts if J not in candidates)
    expected = len(seeds) * r / len(candidates)
    stat = sum((counts[J] - expected) ** 2 / expected for J in candidates)
    assert stat < 40.0, counts  # chi-square with 6 degrees of freedom: P(> 40) < 1e-6
