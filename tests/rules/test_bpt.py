"""Tests for graphattn.rules.bpt: the BP-Transformer graph against a naive reference oracle."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from graphattn.graph import AttentionGraph, EdgeLabel, NodeType
from graphattn.rules import bp_transformer
from graphattn.rules.bpt import bpt_levels


# ----------------------------------------------------------------------------- oracle
# Copied, trimmed, from the project's naive BPT oracle (bpt_oracle.py: level_sizes,
# _left_context, _right_context, bpt_graph), which transliterates the reference implementation
# yzh119/BPT, graph_builder/builder.pyx, BinaryPartition.build_graph. Only the intended-graph
# semantics (faithful=False) are kept: the reference's off-by-one right-hand key is skipped.
def level_sizes(n):
    """Nodes per level, finest (tokens) first, root last; one level when n == 1."""
    sizes, m = [], n
    while m >= 2:
        sizes.append(m)
        m = (m + 1) // 2
    sizes.append(1)
    return sizes


def _shifts(sizes):
    shift = [0]
    for s in sizes:
        shift.append(shift[-1] + s)
    return shift


def _left_context(i, k, sizes):
    """(node_level, node_index, code_level, slot) of token i's left contextual keys."""
    out, p, overlap = [], i - 1, False
    for j in range(len(sizes)):
        for slot in range(k):
            if p >= 0:
                if overlap:  # p's right child is covered: take its left child one level down
                    out.append((j - 1, 2 * p, j, slot))
                    overlap = False
                else:
                    out.append((j, p, j, slot))
            p -= 1
        overlap = p % 2 == 0
        p = p // 2
    return out


def _right_context(i, k, sizes):
    out, r, overlap = [], i + 1, False
    for j in range(len(sizes)):
        for slot in range(k):
            if r < sizes[j]:
                if overlap:  # r's left child is covered: take its right child one level down
                    child = 2 * r + 1
                    if child < sizes[j - 1]:
                        out.append((j - 1, child, j, slot))
                    overlap = False
                else:
                    out.append((j, r, j, slot))
            r += 1
        overlap = r % 2 == 1
        r = r // 2
    return out


def bpt_graph(n, k, causal=False, clip_dist=10**9):
    """(num_nodes, {(key, query)}, node -> (level, start, stop), {(key, query): [edge types]})."""
    sizes = level_sizes(n)
    shift = _shifts(sizes)

    def gid(level, idx):
        return shift[level] + idx

    node_info = {}
    for j, s in enumerate(sizes):
        for v in range(s):
            node_info[gid(j, v)] = (j, v << j, min((v + 1) << j, n))

    def etype(code_level, offset):
        return (2 * k + 1) * min(code_level, clip_dist) + offset

    labels = {}

    def add(key, query, t):
        labels.setdefault((key, query), []).append(t)

    for i in range(n):
        for j in range(len(sizes)):  # self-loop (j = 0) and affiliated edges
            add(i, gid(j, i >> j), etype(j, 0))
        for (lvl, idx, cl, slot) in _left_context(i, k, sizes):
            add(gid(lvl, idx), i, etype(cl, 2 * slot + 1))
        if not causal:
            for (lvl, idx, cl, slot) in _right_context(i, k, sizes):
                add(gid(lvl, idx), i, etype(cl, 2 * (slot + 1)))
    return shift[-1], set(labels), node_info, {e: sorted(ts) for e, ts in labels.items()}


# ----------------------------------------------------------------------------- helpers
def graph_edges(g: AttentionGraph) -> dict[tuple[int, int], tuple[int, int]]:
    key, query = g.edge_index.tolist()
    return dict(zip(zip(key, query), zip(g.edge_label.tolist(), g.relative.tolist())))


def check_structure(g: AttentionGraph, n: int, num_nodes: int) -> None:
    assert g.num_nodes == num_nodes and g.num_tokens == n
    assert g.node_type.tolist() == [int(NodeType.TOKEN)] * n + [int(NodeType.SPAN)] * (num_nodes - n)
    code = g.edge_index[1] * num_nodes + g.edge_index[0]
    assert bool((code[1:] > code[:-1]).all())
    assert g.relative is not None and g.relative.shape == (g.num_edges,)
    assert g.head_mask is None


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("n", range(1, 41))
def test_bpt_matches_oracle(n):
    for k in (1, 2, 3):
        for causal in (False, True):
            g = bp_transformer(n, k=k, causal=causal)
            num_nodes, edges, info, etypes = bpt_graph(n, k, causal)
            check_structure(g, n, num_nodes)
            assert len(bpt_levels(n)) == len(level_sizes(n)) and bpt_levels(n) == level_sizes(n)
            got = graph_edges(g)
            assert set(got) == edges, (n, k, causal)
            for (key, query), (label, rel) in got.items():
                types = etypes[(key, query)]
                assert len(types) == 1, "the intended graph has no duplicate edges"
                assert rel == types[0], ((key, query), rel, types)
                if query >= n:
                    want = EdgeLabel.AFFILIATED
                elif key == query:
                    want = EdgeLabel.SELF
                else:
                    want = EdgeLabel.CONTEXTUAL
                assert label == int(want), ((key, query), label)
            # affiliated: every span node attends exactly the tokens it covers
            span_keys: dict[int, list[int]] = {}
            for (j, q) in edges:
                if q >= n:
                    span_keys.setdefault(q, []).append(j)
            for v in range(n, num_nodes):
                _, lo, hi = info[v]
                assert sorted(span_keys[v]) == list(range(lo, hi))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11, 16, 17, 31, 40, 64, 100])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_bpt_tiling(n, k, causal):
    """Each token plus the spans of its contextual keys cover [0, n) (causal: [0, i]) once."""
    g = bp_transformer(n, k=k, causal=causal)
    key, query = g.edge_index.tolist()
    # the span of a node, read off the graph itself: a span node's affiliated keys
    span = {v: [v] for v in range(n)}
    for j, q in zip(key, query):
        if q >= n:
            span.setdefault(q, []).append(j)
    rows: dict[int, list[int]] = {i: [] for i in range(n)}
    for j, q in zip(key, query):
        if q < n:
            rows[q].append(j)
    for i in range(n):
        assert i in rows[i]
        cover = Counter()
        for j in rows[i]:
            cover.update(span[j])
        want = range(n) if not causal else range(i + 1)
        assert sorted(cover) == list(want) and set(cover.values()) == {1}, (i, cover)


def test_bpt_relative_ids_range_and_level():
    n, k = 37, 2
    g = bp_transformer(n, k=k)
    levels = len(bpt_levels(n))
    rel = g.relative
    assert int(rel.min()) >= 0 and int(rel.max()) < (2 * k + 1) * levels
    # affiliated edges of a level-l span carry (2k+1) * l, token self-loops 0
    key, query = g.edge_index
    assert bool((rel[(key == query) & (query < n)] == 0).all())
    shift = _shifts(level_sizes(n))
    for lvl in range(1, levels):
        sel = (query >= shift[lvl]) & (query < shift[lvl + 1])
        assert bool((rel[sel] == (2 * k + 1) * lvl).all())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bpt_keys_per_token_grow_like_log_n(k):
    means, prev = [], None
    for m in range(4, 13, 2):  # n = 16 .. 4096
        n = 2**m
        kpq = bp_transformer(n, k=k).keys_per_query()[:n].double()
        assert int(kpq.max()) <= 2 * k * m + 1
        mean = float(kpq.mean())
        assert mean <= 2 * k * math.log2(n / k) + 1
        if prev is not None and n >= 64:
            # quadrupling n adds about 2 levels, i.e. about 4k keys per token: logarithmic growth
            assert 0.75 * 4 * k <= mean - prev <= 4 * k + 0.5, (n, mean, prev)
        means.append(mean)
        prev = mean
    assert means == sorted(means)


def test_bpt_num_nodes():
    for n in (1, 2, 3, 8, 9, 100):
        g = bp_transformer(n, k=1)
        assert g.num_nodes == sum(level_sizes(n))
    assert bp_transformer(16, k=1).num_nodes == 31  # n - 1 span nodes for a power of two
    assert bp_transformer(1, k=2).num_edges == 1    # the single token is the root: only itself


def test_bpt_docstring_example():
    g = bp_transformer(8, k=1)
    assert (g.num_nodes, g.keys_per_query()[:8].tolist()) == (15, [4, 5, 6, 6, 6, 6, 5, 4])
    assert g.edge_index[0, g.edge_index[1] == 0].tolist() == [0, 1, 9, 13]


def test_bpt_causal_keeps_only_left_keys():
    n = 29
    g = bp_transformer(n, k=2, causal=True)
    key, query = g.edge_index
    info = bpt_graph(n, 2, True)[2]
    for j, i in zip(key.tolist(), query.tolist()):
        if i < n:
            assert info[j][2] <= i + 1  # the key's span ends at or before the query token
