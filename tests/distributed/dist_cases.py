"""Cases and the per-rank worker of the multi-process tests (spawned processes import this
module by name, so it must stay importable from ``tests/distributed``).

Every rank rebuilds the same full inputs from fixed seeds, takes its shard, runs the sharded
attention / layer / exchange and saves what it computed; the parent process compares the
concatenated shards with single-process runs on the whole graph. Each attention case runs
under three plans: the default (queries move where that is smaller), ``keys`` (the halo
exchange alone) and ``queries`` (every rank sends its queries to every rank whose keys they
name: the moved-query machinery on every edge that crosses ranks, uneven and empty shards
included).
"""

from __future__ import annotations

import functools
import os

import torch

from graphattn import distributed as gd
from graphattn import rules
from graphattn.nn import GraphAttention

# name -> (full graph builder, rule callable for the sharded build or None, how the graph is
# handed to graph_attention: "graph" | "rule" | "plan", heads, D, Dv, with an edge bias)
CASES = {
    "band": (lambda: rules.band(37, radius=3), functools.partial(rules.band, 37, radius=3), "rule", 2, 4, 3, True),
    "band_causal": (lambda: rules.band(37, radius=4, causal=True), None, "graph", 2, 4, 4, False),
    "bigbird": (lambda: rules.bigbird(39, block_size=4, seed=1), None, "graph", 2, 4, 3, False),
    "bigbird_etc": (lambda: rules.bigbird_etc(39, block_size=4, num_global=2, seed=1),
                    functools.partial(rules.bigbird_etc, 39, block_size=4, num_global=2, seed=1), "rule", 2, 4, 3, True),
    "longformer": (lambda: rules.longformer(37, radius=2, dilation=[1, 2], global_indices=[0, 18]),
                   None, "graph", 2, 4, 3, True),
    "bp_transformer": (lambda: rules.bp_transformer(21, k=2), functools.partial(rules.bp_transformer, 21, k=2),
                       "plan", 2, 4, 3, False),
    "random": (lambda: rules.random(37, num_random_keys=5, seed=3),
               functools.partial(rules.random, 37, num_random_keys=5, seed=3), "rule", 2, 4, 3, True),
    "block_aligned": (lambda: rules.block_local(32, block_size=8), None, "graph", 1, 4, 3, False),
    "star": (lambda: rules.star_transformer(9), None, "graph", 2, 4, 3, False),
    "etc": (lambda: rules.etc(22, num_global=2, radius=2), functools.partial(rules.etc, 22, num_global=2, radius=2),
            "rule", 2, 4, 3, True),
    "global_rows": (lambda: rules.global_tokens(45, global_indices=[0, 1, 30]) | rules.band(45, radius=1),
                    None, "graph", 2, 4, 3, True),
    "tiny": (lambda: rules.band(3, radius=1), None, "graph", 1, 2, 2, False),
}

# Layer cases: (graph builder, batch size or None for [N, E] input, embed dim, heads, num_relative)
LAYER_CASES = {
    "layer_etc": (lambda: rules.etc(22, num_global=2, radius=2), None, 8, 2, 2 * 2 + 2),
    "layer_band_batched": (lambda: rules.band(29, radius=2), 2, 8, 2, None),
    "layer_longformer_batched": (lambda: rules.longformer(29, radius=1, dilation=[1, 3], global_indices=[5]),
                                 2, 8, 2, None),
}

def encoder_setup():
    """Single-process encoder (float64, seeded), its graphs, input tokens and output weights."""
    from graphattn.models import GraphRule, SparseEncoder

    n, g = 25, 2
    graphs = [GraphRule(rules.bigbird_etc, block_size=4, num_global=g, seed=0), rules.etc(n, num_global=g, radius=2)]
    enc = SparseEncoder(8, 2, graphs=graphs, num_global=g, num_relative=2 * 2 + 2).double()
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    x = torch.randn(2, n, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(2, n, 8, generator=gen, dtype=torch.float64)
    wg = torch.randn(2, g, 8, generator=gen, dtype=torch.float64)
    return enc, graphs, x, w, wg


EXCHANGE_CASES = ["band", "random", "longformer", "bigbird_etc", "band_causal"]

# Plans: shard_plan's move_queries ("keys", the halo exchange alone, runs in the slow tests: the
# default plan already is keys-only wherever no row moves).
PLANS = ["default", "queries", "keys"]
DEFAULT_PLANS = ["default", "queries"]
MOVES = {"default": True, "keys": False, "queries": "all"}


def inputs(name: str):
    """Full q, k, v, output-gradient weights and edge bias (float64, fixed seeds)."""
    make, _, _, H, D, Dv, with_bias = CASES[name]
    g = make()
    gen = torch.Generator().manual_seed(_stable_seed(name))
    n = g.num_nodes
    q = torch.randn(n, H, D, generator=gen, dtype=torch.float64)
    k = torch.randn(n, H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(n, H, Dv, generator=gen, dtype=torch.float64)
    w = torch.randn(n, H, Dv, generator=gen, dtype=torch.float64)
    bias = torch.randn(g.num_edges, H, generator=gen, dtype=torch.float64) if with_bias else None
    return g, q, k, v, w, bias


def layer_setup(name: str):
    """Full graph, single-process layer (float64, seeded init), input x and output weights."""
    make, batch, E, H, R = LAYER_CASES[name]
    g = make()
    gen = torch.Generator().manual_seed(7)
    layer = GraphAttention(E, H, num_relative=R).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    shape = (g.num_nodes, E) if batch is None else (batch, g.num_nodes, E)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    return g, layer, x, w


def _stable_seed(name: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 1000


def _shard(t, span, dim=0):
    return t.narrow(dim, span.start, len(span))


def worker(rank: int, world: int, out_dir: str, plans) -> None:
    results = {}
    for name, (make, rule, mode, H, D, Dv, with_bias) in CASES.items():
        g, q, k, v, w, bias = inputs(name)
        span = gd.local_range(g.num_nodes, rank, world)
        ptr = g.query_ptr
        for plan_name in plans:
            ql, kl, vl = (_shard(t, span).clone().requires_grad_() for t in (q, k, v))
            bl = None
            if bias is not None:
                bl = bias[int(ptr[span.start]):int(ptr[span.stop])].clone().requires_grad_()
            if plan_name == "default" and mode == "graph":
                graph = g
            elif plan_name == "default" and mode == "rule":
                graph = rule
            else:
                graph = gd.shard_plan(rule if rule is not None else g, num_nodes=g.num_nodes,
                                      move_queries=MOVES[plan_name])
            out, weights = gd.graph_attention(ql, kl, vl, graph, bias=bl, return_attention_weights=True)
            (out * _shard(w, span)).sum().backward()
            plan = graph if isinstance(graph, gd.ShardPlan) else gd.resolve_plan(graph, len(span))
            # (the cached plan of the full graph / a rebuilt rule plan: a collective that every
            # rank reaches for every case)
            results[(name, plan_name)] = {
                "out": out.detach(), "dq": ql.grad, "dk": kl.grad, "dv": vl.grad, "weights": weights,
                "dbias": None if bl is None else bl.grad,
                "num_received": plan.num_received, "num_sent": plan.num_sent,
                "queries": plan.num_received_queries, "partials": plan.num_received_partials,
                "edges": plan.num_received_edges, "moves": plan.moves_queries,
                "bytes": plan.received_bytes(H, D, Dv, itemsize=8, bias=with_bias),
                "bcast": plan.halo.bcast_index.numel(), "extended_ids": plan.extended_ids,
                "query_bcast": 0 if plan.scatter is None else plan.scatter.queries.bcast_index.numel(),
            }
    if "default" not in plans:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        return
    for name, (make, batch, E, H, R) in LAYER_CASES.items():
        g, layer, x, w = layer_setup(name)
        span = gd.local_range(g.num_nodes, rank, world)
        dim = 0 if batch is None else 1
        for plan_name in ("default", "queries"):
            dlayer = gd.GraphAttention(E, H, num_relative=R).double()
            dlayer.load_state_dict(layer.state_dict())
            xl = _shard(x, span, dim).clone().requires_grad_()
            graph = g if plan_name == "default" else gd.shard_plan(g, move_queries="all")
            out, weights = dlayer(xl, graph, return_attention_weights=True)
            (out * _shard(w, span, dim)).sum().backward()
            results[(name, plan_name)] = {"out": out.detach(), "dx": xl.grad, "weights": weights,
                                          "moves": gd.resolve_plan(graph, len(span)).moves_queries,
                                          "grads": {k: p.grad for k, p in dlayer.named_parameters()}}
    enc, graphs, x, w, wg = encoder_setup()
    denc = gd.ShardedSparseEncoder(8, 2, graphs=graphs, num_global=2, num_relative=6).double()
    denc.load_state_dict(enc.state_dict())
    span = gd.token_range(x.shape[1], 2, rank, world)
    nodes = gd.local_range(x.shape[1] + 2, rank, world)
    xl = x[:, span.start:span.stop].clone().requires_grad_()
    tokens, glob = denc(xl, return_global=True)
    g0, g1 = max(nodes.start, x.shape[1]) - x.shape[1], max(nodes.stop, x.shape[1]) - x.shape[1]
    ((tokens * w[:, span.start:span.stop]).sum() + (glob * wg[:, g0:g1]).sum()).backward()
    results["encoder"] = {"tokens": tokens.detach(), "global": glob.detach(), "dx": xl.grad,
                          "grads": {k: p.grad for k, p in denc.named_parameters()}}
    for name in EXCHANGE_CASES:
        g = CASES[name][0]()
        gen = torch.Generator().manual_seed(_stable_seed(name))
        x = torch.randn(g.num_nodes, 2, 3, generator=gen, dtype=torch.float64)
        wx = torch.randn(g.num_nodes, 2, 3, generator=gen, dtype=torch.float64)
        span = gd.local_range(g.num_nodes, rank, world)
        plan = gd.shard_plan(g, move_queries=False)  # every key the shard names comes over
        xl = _shard(x, span).clone().requires_grad_()
        ext = gd.exchange_rows(xl, plan)
        (ext * wx[plan.extended_ids]).sum().backward()
        results["exchange_" + name] = {"ext": ext.detach(), "ids": plan.extended_ids, "dx": xl.grad}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
