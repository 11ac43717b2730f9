"""merge_rows: the log-sum-exp rule over segments equals graphattn.nn.merge_attention on the
same parts laid out densely (values and gradients), and equals attention over the union."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphattn import rules
from graphattn.distributed.merge import merge_rows
from graphattn.nn import graph_attention, merge_attention


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.integers(1, 6), parts=st.integers(1, 12))
def test_equals_merge_attention_on_the_dense_layout(seed, rows, parts):
    gen = torch.Generator().manual_seed(seed)
    row = torch.randint(0, rows, (parts,), generator=gen)
    outs = torch.randn(parts, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    lses = (torch.randn(parts, 2, generator=gen, dtype=torch.float64) * 5)
    lses[torch.rand(parts, 2, generator=gen) < 0.25] = float("-inf")  # keyless parts
    lses.requires_grad_()
    w_out = torch.randn(rows, 2, 3, generator=gen, dtype=torch.float64)
    w_lse = torch.randn(rows, 2, generator=gen, dtype=torch.float64)
    out, lse = merge_rows(outs, lses, row, rows)
    live = torch.isfinite(lse)
    (((out * w_out).sum() + torch.where(live, lse * w_lse, torch.zeros_like(lse)).sum())).backward()
    got = (out.detach(), lse.detach(), outs.grad.clone(), lses.grad.clone())
    # dense: slot p holds part p for its row, -inf (nothing) for the other rows
    o2, l2 = outs.detach().clone().requires_grad_(), lses.detach().clone().requires_grad_()
    dense_o, dense_l = [], []
    for p in range(parts):
        mask = (torch.arange(rows) == row[p])
        dense_o.append(torch.where(mask[:, None, None], o2[p].expand(rows, 2, 3), torch.zeros(rows, 2, 3, dtype=torch.float64)))
        dense_l.append(torch.where(mask[:, None], l2[p].expand(rows, 2), torch.full((rows, 2), float("-inf"), dtype=torch.float64)))
    ref_out, ref_lse = merge_attention(dense_o, dense_l)
    (((ref_out * w_out).sum() + torch.where(live, ref_lse * w_lse, torch.zeros_like(ref_lse)).sum())).backward()
    torch.testing.assert_close(got[0], ref_out.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], ref_lse.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2], o2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[3], l2.grad, rtol=1e-12, atol=1e-12)
    assert not torch.isnan(got[3]).any()


def test_parts_over_disjoint_keys_give_the_whole_attention():
    g = rules.bigbird(24, block_size=4, seed=0)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(24, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    key, query = g.edge_index
    outs, lses, row = [], [], []
    for part in range(3):  # keys split in three; each part attends its keys only
        ei = g.edge_index[:, key % 3 == part]
        o, s = graph_attention(q, k, v, ei, return_lse=True)
        outs.append(o)
        lses.append(s)
        row.append(torch.arange(24))
    out, lse = merge_rows(torch.cat(outs), torch.cat(lses), torch.cat(row), 24)
    ref, ref_lse = graph_attention(q, k, v, g, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_a_row_without_parts_is_zero_and_minus_infinity():
    out, lse = merge_rows(torch.ones(1, 1, 2), torch.zeros(1, 1), torch.tensor([1]), 3)
    assert torch.equal(out[0], torch.zeros(1, 2)) and torch.equal(out[1], torch.ones(1, 2))
    assert lse[0].item() == float("-inf") and lse[2].item() == float("-inf")
