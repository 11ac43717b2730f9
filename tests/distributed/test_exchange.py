"""The differentiable halo exchange on 2 and 4 gloo processes: every rank receives exactly the
rows its queries name, and the backward returns every copy's gradient to the owner."""

from __future__ import annotations

import pytest
import torch
from tests.distributed.dist_cases import CASES, EXCHANGE_CASES, _stable_seed

from graphattn import distributed as gd
from graphattn import rules


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name", EXCHANGE_CASES)
def test_exchange_rows_and_gradients(dist_results, world, name):
    results = dist_results(world)
    g = CASES[name][0]()
    gen = torch.Generator().manual_seed(_stable_seed(name))
    x = torch.randn(g.num_nodes, 2, 3, generator=gen, dtype=torch.float64)
    wx = torch.randn(g.num_nodes, 2, 3, generator=gen, dtype=torch.float64)
    dense = g.to_dense()
    copies = torch.zeros(g.num_nodes, dtype=torch.int64)
    for r, res in enumerate(results):
        span = gd.local_range(g.num_nodes, r, world)
        ids = res["exchange_" + name]["ids"]
        # the extended rows: the local rows plus every key the shard's queries attend (oracle:
        # the dense mask's columns), nothing else
        need = dense[span.start:span.stop].any(0)
        need[span.start:span.stop] = True
        assert torch.equal(ids, need.nonzero().flatten())
        assert torch.equal(res["exchange_" + name]["ext"], x[ids])
        copies[ids] += 1
    # d/dx_i of sum_r sum_{p} ext_r[p] * wx[ids_r[p]] = wx_i times the number of ranks holding row i
    grad = torch.cat([res["exchange_" + name]["dx"] for res in results])
    torch.testing.assert_close(grad, wx * copies[:, None, None].double(), rtol=0, atol=1e-15)


def test_single_process_exchange_is_identity():
    g = rules.band(7, radius=2)
    plan = gd.shard_plan(g)
    x = torch.randn(7, 2, requires_grad=True)
    ext = gd.exchange_rows(x, plan)
    assert torch.equal(ext, x) and plan.num_received == 0 and plan.num_sent == 0
    ext.sum().backward()
    assert torch.equal(x.grad, torch.ones(7, 2))


def test_exchange_errors():
    plan = gd.shard_plan(rules.band(7, radius=2))
    with pytest.raises(ValueError, match="expected x with 7 rows"):
        gd.exchange_rows(torch.randn(6, 2), plan)
