"""Sharded attention on 2 and 4 gloo processes equals single-process attention on the whole
graph under every plan (queries moved where smaller, keys only, queries moved everywhere):
outputs, q/k/v gradients, edge-bias gradients and attention weights; layer outputs, input and
parameter gradients (relative bias, per-head layouts, folded batches). Also checked against an
independent dense float64 oracle."""

from __future__ import annotations

import functools

import pytest
import torch
from tests.distributed.dist_cases import CASES, DEFAULT_PLANS, LAYER_CASES, PLANS, inputs, layer_setup
from tests.nn.reference import dense_attention, dense_bias

from graphattn import distributed as gd
from graphattn import rules
from graphattn.nn import graph_attention as local_attention

WORLDS = [2, 4]
PLAN_PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p == "keys" else p for p in PLANS]
TOL = dict(rtol=1e-10, atol=1e-12)


def _reference(name):
    g, q, k, v, w, bias = inputs(name)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    b = None if bias is None else bias.clone().requires_grad_()
    out, weights = local_attention(q, k, v, g, bias=b, return_attention_weights=True)
    (out * w).sum().backward()
    return g, out.detach(), q.grad, k.grad, v.grad, None if b is None else b.grad, weights


def _dense_oracle(g, q, k, v, bias):
    N, H = g.num_nodes, q.shape[1]
    if g.head_mask is None:
        mask = g.to_dense()
    else:
        mask = torch.zeros(H, N, N, dtype=torch.bool)
        for h in range(H):
            ei = g.edge_index[:, g.head_mask[:, h]]
            mask[h, ei[1], ei[0]] = True
    db = None if bias is None else dense_bias(g.edge_index, bias, N, N)
    return dense_attention(q, k, v, mask, db)[0]


def _cat(results, case, key):
    return torch.cat([r[case][key] for r in results])


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("plan", PLAN_PARAMS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_and_gradients_equal_single_process(dist_results, world, name, plan):
    results = dist_results(world, plan)
    case = (name, plan)
    g, out, dq, dk, dv, dbias, weights = _reference(name)
    torch.testing.assert_close(_cat(results, case, "out"), out, **TOL)
    torch.testing.assert_close(_cat(results, case, "dq"), dq, **TOL)
    torch.testing.assert_close(_cat(results, case, "dk"), dk, **TOL)
    torch.testing.assert_close(_cat(results, case, "dv"), dv, **TOL)
    torch.testing.assert_close(_cat(results, case, "weights"), weights, **TOL)
    if dbias is not None:
        torch.testing.assert_close(_cat(results, case, "dbias"), dbias, **TOL)
    # and against the independent dense oracle
    _, q, k, v, _, bias = inputs(name)
    torch.testing.assert_close(_cat(results, case, "out"), _dense_oracle(g, q, k, v, bias), **TOL)


@pytest.mark.parametrize("world", WORLDS)
def test_the_plans_differ_where_they_should(dist_results, world):
    results = dist_results(world)
    moved = lambda name, plan: [bool(r[(name, plan)]["moves"].any()) for r in results]  # noqa: E731
    # The "queries" plan moves them from every rank whose rows name another rank's keys.
    assert all(moved("band", "queries")) and not any(moved("band", "default"))
    # Global rows move by default: Longformer's global tokens 0 and 18 from rank 0, the global
    # rows 0, 1 (rank 0) and 30, ETC's global nodes (the last rank).
    assert moved("longformer", "default")[0] and moved("global_rows", "default")[0]
    assert moved("etc", "default")[-1]
    # every moved query row comes back as one partial result, except that a row broadcast to
    # the world - 1 other ranks comes back as one sum of its world - 1 parts
    for plan in ("default", "queries"):
        got = [r[("global_rows", plan)] for r in results]
        assert got[0]["partials"] > 0
        bcast = sum(r["query_bcast"] for r in got)
        assert (bcast > 0) == (world >= 3)  # the global rows 0 and 1 of rank 0 name every rank's keys
        assert sum(r["queries"] for r in got) == sum(r["partials"] for r in got) + (world - 2) * bcast


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("plan", ["default", "queries"])
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_equals_single_process_layer(dist_results, world, name, plan):
    results = [r[(name, plan)] for r in dist_results(world)]
    g, layer, x, w = layer_setup(name)
    x = x.clone().requires_grad_()
    out, weights = layer(x, g, return_attention_weights=True)
    (out * w).sum().backward()
    dim = 0 if x.dim() == 2 else 1
    torch.testing.assert_close(torch.cat([r["out"] for r in results], dim), out.detach(), **TOL)
    torch.testing.assert_close(torch.cat([r["dx"] for r in results], dim), x.grad, **TOL)
    torch.testing.assert_close(torch.cat([r["weights"] for r in results], dim), weights, **TOL)
    if plan == "queries":
        assert any(bool(r["moves"].any()) for r in results)
    for pname, p in layer.named_parameters():
        total = sum(r["grads"][pname] for r in results)  # each rank's share of the gradient
        torch.testing.assert_close(total, p.grad, **TOL, msg=f"{name}: {pname}")


@pytest.mark.parametrize("world", WORLDS)
def test_sharded_encoder_equals_single_process_encoder(dist_results, world):
    from tests.distributed.dist_cases import encoder_setup

    results = [r["encoder"] for r in dist_results(world)]
    enc, graphs, x, w, wg = encoder_setup()
    x = x.clone().requires_grad_()
    tokens, glob = enc(x, return_global=True)
    ((tokens * w).sum() + (glob * wg).sum()).backward()
    torch.testing.assert_close(torch.cat([r["tokens"] for r in results], 1), tokens.detach(), **TOL)
    torch.testing.assert_close(torch.cat([r["global"] for r in results], 1), glob.detach(), **TOL)
    torch.testing.assert_close(torch.cat([r["dx"] for r in results], 1), x.grad, **TOL)
    for pname, p in enc.named_parameters():
        shares = [r["grads"][pname] for r in results if r["grads"][pname] is not None]
        if p.grad is None:  # unused parameter (layer 0's relative bias: BigBird has no relative ids)
            assert not shares, pname
            continue
        torch.testing.assert_close(sum(shares), p.grad, **TOL, msg=f"encoder: {pname}")


def test_uneven_split_and_empty_rank_are_exercised():
    # The cases cover n % world != 0 for both world sizes, and a rank with no rows at all.
    sizes = {name: CASES[name][0]().num_nodes for name in CASES}
    assert any(n % 2 for n in sizes.values()) and any(n % 4 for n in sizes.values())
    assert sizes["tiny"] < 4  # rank 3 of 4 owns nothing


@pytest.mark.parametrize("world", WORLDS)
def test_ranks_without_remote_needs(dist_results, world):
    results = dist_results(world)
    # block_local with blocks aligned to the shards: nobody receives or sends anything
    for plan in DEFAULT_PLANS:
        assert [r[("block_aligned", plan)]["num_received"] for r in results] == [0] * world
        assert [r[("block_aligned", plan)]["num_sent"] for r in results] == [0] * world
        assert [r[("block_aligned", plan)]["queries"] for r in results] == [0] * world
    # causal band (no row moves): rank 0 needs nothing but still serves rank 1
    assert results[0][("band_causal", "default")]["num_received"] == 0
    assert results[0][("band_causal", "default")]["num_sent"] > 0
    assert results[1][("band_causal", "default")]["num_received"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_the_keys_plan_moves_no_query(dist_results, world):
    assert not any(bool(r[(name, "keys")]["moves"].any()) for r in dist_results(world, "keys") for name in CASES)
    assert not any(r[(name, "keys")]["queries"] or r[(name, "keys")]["partials"]
                   for r in dist_results(world, "keys") for name in CASES)


def test_global_rows_are_broadcast_at_four_ranks(dist_results):
    results = dist_results(4)
    # Longformer's global tokens 0 and 18 are keys every other rank needs: broadcast by their
    # owners (the global rows move, the global keys stay in the halo)
    assert results[0][("longformer", "default")]["bcast"] >= 1 and results[1][("longformer", "default")]["bcast"] >= 1
    # a band has no row every rank needs
    assert all(r[("band", "default")]["bcast"] == 0 for r in results)
    # two ranks never broadcast (an all-to-all row is as cheap)
    assert all(r[key]["bcast"] == 0 for r in dist_results(2) for key in r if isinstance(key, tuple) and key[0] in CASES)


# ---------------------------------------------------------------- single process (no group)

def test_without_process_group_equals_local_attention():
    g = rules.bigbird_etc(21, block_size=4, num_global=2, seed=0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(g.num_nodes, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(g.num_edges, 2, generator=gen, dtype=torch.float64)
    ref, wref = local_attention(q, k, v, g, bias=bias, return_attention_weights=True)
    out, w = gd.graph_attention(q, k, v, g, bias=bias, return_attention_weights=True)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(w, wref, **TOL)
    rule = functools.partial(rules.bigbird_etc, 21, block_size=4, num_global=2, seed=0)
    torch.testing.assert_close(gd.graph_attention(q, k, v, rule, bias=bias), ref, **TOL)


def test_layer_without_process_group_equals_layer():
    from graphattn.nn import GraphAttention

    g = rules.etc(12, num_global=2, radius=1)
    torch.manual_seed(0)
    base = GraphAttention(8, 2, num_relative=4)
    torch.nn.init.normal_(base.relative_bias.weight)
    layer = gd.GraphAttention(8, 2, num_relative=4)
    layer.load_state_dict(base.state_dict())
    x = torch.randn(2, g.num_nodes, 8)
    out, w = layer(x, g, return_attention_weights=True)
    ref, wref = base(x, g, return_attention_weights=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w, wref)


def test_edgeless_shard_gives_zeros_and_zero_gradients():
    g = rules.band(4, radius=1) - rules.band(4, radius=1)  # no edges at all
    q, k, v = (torch.randn(4, 1, 2, requires_grad=True) for _ in range(3))
    out = gd.graph_attention(q, k, v, g)
    assert torch.equal(out, torch.zeros(4, 1, 2))
    out.sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k)) and torch.equal(q.grad, torch.zeros_like(q))


def test_bad_input_errors():
    g = rules.band(6, radius=1)
    q = torch.randn(6, 2, 4)
    with pytest.raises(ValueError, match="expected 6 local rows"):
        gd.graph_attention(q[:5], q[:5], q[:5], g)
    with pytest.raises(TypeError, match="expected graph to be an AttentionGraph, a ShardPlan or a rule"):
        gd.graph_attention(q, q, q, g.edge_index)
    with pytest.raises(ValueError, match=r"expected q of shape \[n_local, H, D\]"):
        gd.graph_attention(q[0], q, q, g)
    with pytest.raises(TypeError, match="one floating-point dtype"):
        gd.graph_attention(q, q.double(), q, g)
    with pytest.raises(ValueError, match="same rows"):
        gd.graph_attention(q, q[:5], q, g)
    with pytest.raises(ValueError, match="expected graph\\(queries=range\\(0, 6\\)\\) over num_nodes = 6"):
        gd.graph_attention(q, q, q, functools.partial(rules.band, 7, radius=1))
    with pytest.raises(ValueError, match="embed_dim = 8"):
        gd.GraphAttention(8, 2)(torch.randn(6, 4), g)
    with pytest.raises(ValueError, match=r"expected x of shape \[N, E\] or \[B, N, E\], got \[6\]"):
        gd.GraphAttention(8, 2)(torch.randn(6), g)
    with pytest.raises(TypeError, match="expected x to be a floating-point tensor, got dtype torch.int64"):
        gd.GraphAttention(8, 2)(torch.ones(6, 8, dtype=torch.int64), g)
    with pytest.raises(TypeError, match="expected x to be a torch.Tensor"):
        gd.GraphAttention(8, 2)([[0.0] * 8] * 6, g)


def test_encoder_bad_input_errors():
    from graphattn.models import GraphRule

    enc = gd.ShardedSparseEncoder(8, 2, graphs=[GraphRule(rules.band, radius=1)])
    with pytest.raises(ValueError, match="expected x with last dim embed_dim = 8, got 4"):
        enc(torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"expected x of shape \[N, E\] or \[B, N, E\], got \[1, 1, 6, 8\]"):
        enc(torch.randn(1, 1, 6, 8))
    with pytest.raises(TypeError, match="expected x to be a floating-point tensor"):
        enc(torch.ones(6, 8, dtype=torch.int32))
    assert enc(torch.randn(6, 8)).shape == (6, 8)  # no process group: one rank
