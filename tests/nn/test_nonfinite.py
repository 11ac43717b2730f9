"""NaN and infinities stay where the graph puts them (graph_attention's documented semantics).

Oracle: the same call on the graph without the poisoned queries' influence, i.e. a float64 dense
reference in which every poisoned query is dropped, compared on all other rows (outputs) and on
all gradient entries that do not depend on a poisoned query; those must be NaN.
"""

import pytest
import torch

from graphattn import rules
from graphattn.nn import graph_attention
from graphattn.nn.reference import dense_attention, dense_bias, dense_mask

PATHS = {"fused-cpu": dict(), "dense-tiles": dict(bias=True), "csr": dict(dense_threshold=1.0)}


def graph(n=130):
    # 64-row tiles: a poisoned key sits in a tile whose other rows do not attend it.
    return rules.band(n, radius=10) | rules.global_tokens(n, global_indices=[100])


def setup(n=130, H=2, D=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, H, D, generator=gen, dtype=torch.float64) for _ in range(3)]


def poisoned_rows(g, H, bad_q=(), bad_kv=(), bad_edges=()):
    """[N, H] bool: the queries the semantics poison (heads given per entry)."""
    rows = torch.zeros(g.num_nodes, H, dtype=torch.bool)
    key, query = g.edge_index
    for i, h in bad_q:
        rows[i, h] = True
    for j, h in bad_kv:
        rows[query[key == j], h] = True
    for e, h in bad_edges:
        rows[query[e], h] = True
    return rows


def run(g, q, k, v, bias, opts, go):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)] + ([] if bias is None else [bias.clone().requires_grad_()])
    out, lse = graph_attention(*leaves[:3], g, bias=None if bias is None else leaves[3], return_lse=True, **opts)
    grads = torch.autograd.grad((out * go).sum(), leaves)
    return out, lse, grads


def reference(g, q, k, v, bias, rows, go):
    """Float64 dense reference with the poisoned queries removed (their rows masked out) and the
    poisoned inputs replaced by zeros: the values every other entry must equal."""
    n, H = q.shape[:2]
    clean = [torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0).requires_grad_() for t in (q, k, v)]
    mask = dense_mask(g.edge_index, n, n)[None].expand(H, n, n) & ~rows.t()[:, :, None]
    bd = None
    if bias is not None:
        bclean = torch.nan_to_num(bias, nan=0.0).requires_grad_()
        clean.append(bclean)
        bd = dense_bias(g.edge_index, bclean, n, n)
    out, _ = dense_attention(*clean[:3], mask, bd)
    grads = torch.autograd.grad((out * go).sum(), clean)
    return out, grads


def dependents(g, rows):
    """Keys [N, H] attended by a poisoned query, edges [E, H] of a poisoned query."""
    key, query = g.edge_index
    keys = torch.zeros_like(rows)
    for h in range(rows.shape[1]):
        keys[key[rows[query, h]], h] = True
    return keys, rows[query]


def compare(g, got, ref, rows, with_bias):
    out, lse, grads = got
    ref_out, ref_grads = ref
    keys, edges = dependents(g, rows)
    assert torch.isnan(out[rows]).all() and torch.isnan(lse[rows]).all()
    torch.testing.assert_close(out[~rows], ref_out[~rows], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(lse[~rows]).all()
    nan_where = [rows, keys, keys] + ([edges] if with_bias else [])
    for name, a, b, where in zip("qkvb", grads, ref_grads, nan_where):
        assert torch.isnan(a[where]).all(), name
        torch.testing.assert_close(a[~where], b[~where], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("where", ["q", "k", "v", "q-inf", "k-inf", "bias-nan"])
def test_a_non_finite_input_poisons_only_what_attends_it(path, where):
    g = graph()
    q, k, v = setup()
    opts = dict(PATHS[path])
    with_bias = opts.pop("bias", False) or where == "bias-nan"
    bias = torch.randn(g.num_edges, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) if with_bias else None
    bad = {}
    if where.startswith("q"):
        q[5, 1, 3] = float("nan") if where == "q" else float("inf")
        bad = dict(bad_q=[(5, 1)])
    elif where in ("k", "k-inf", "v"):
        t = v if where == "v" else k
        t[40, 0, 2] = float("nan") if where != "k-inf" else float("-inf")
        bad = dict(bad_kv=[(40, 0)])
    else:
        e = int(((g.edge_index[1] == 70) & (g.edge_index[0] == 65)).nonzero())
        bias[e, 1] = float("nan")
        bad = dict(bad_edges=[(e, 1)])
    rows = poisoned_rows(g, 2, **bad)
    assert 0 < int(rows.sum()) < 30  # a few rows, not the tile
    go = torch.randn(130, 2, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = run(g, q, k, v, bias, opts, go)
    compare(g, got, reference(g, q, k, v, bias, rows, go), rows, with_bias)


def test_a_nan_key_does_not_reach_its_tile_neighbours_fp32():
    # The case that found it: one NaN key row on the fused dense-tile path poisoned all 64 query
    # rows of its tile; only the queries that attend the key may be NaN.
    g = rules.band(128, radius=4)
    q, k, v = (t.float() for t in setup(128))
    k[30] = float("nan")
    out = graph_attention(q, k, v, g)
    bad = torch.isnan(out).any(-1).any(-1)
    assert bad.nonzero().flatten().tolist() == list(range(26, 35))


def test_minus_inf_bias_removes_the_edge_and_plus_inf_is_an_error():
    g = rules.band(20, radius=2)
    q, k, v = setup(20)
    bias = torch.zeros(g.num_edges, 2, dtype=torch.float64)
    drop = (g.edge_index[0] != g.edge_index[1])  # remove every self-loop
    bias[~drop] = float("-inf")
    out = graph_attention(q, k, v, g, bias=bias)
    ref = graph_attention(q, k, v, g.without_self_loops())
    torch.testing.assert_close(out, ref)
    only = rules.band(20, radius=0)  # every edge removed: keyless rows, zeros, no NaN
    out, lse = graph_attention(q, k, v, only, bias=torch.full((20, 2), float("-inf"), dtype=torch.float64),
                               return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())
    bias[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"\+inf"):
        graph_attention(q, k, v, g, bias=bias)


def test_a_non_finite_incoming_gradient_stays_in_its_rows():
    g = graph()
    q, k, v = setup()
    go = torch.randn(130, 2, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    go[7, 0, 1] = float("nan")
    rows = torch.zeros(130, 2, dtype=torch.bool)
    rows[7, 0] = True
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = graph_attention(*leaves, g)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad((out * go).sum(), leaves)
    _, ref_grads = reference(g, q, k, v, None, rows, torch.nan_to_num(go, nan=0.0))
    keys, _ = dependents(g, rows)
    for a, b, where in zip(grads, ref_grads, (rows, keys, keys)):
        assert torch.isnan(a[where]).all()
        torch.testing.assert_close(a[~where], b[~where], rtol=1e-10, atol=1e-12)


def test_finite_inputs_install_nothing_without_grad():
    from graphattn.nn._nonfinite import Poison

    q, k, v = setup(10)
    ei = rules.band(10, radius=1).edge_index
    assert Poison.find(q, k, v, None, lambda: ei, None) is None
    assert Poison.find(q.requires_grad_(), k, v, None, lambda: ei, None).rows is None  # clean: screens dO only
    big = torch.full((10, 2, 8), 1e308, dtype=torch.float64)  # the sum overflows: a false alarm, cleared
    assert Poison.find(big, k, v, None, lambda: ei, None) is None
