"""Partial attentions of the same query rows over disjoint key sets, merged per row.

:func:`graphattn.nn.merge_attention` combines parts that cover every query (``[P, Nq, H, Dv]``
in effect). A sharded step has a different shape: each moved query row gets partial results
from the few ranks that hold its keys (a global row from every rank, most rows from none), so
the parts arrive as a flat list of rows with the query each belongs to. :func:`merge_rows` is
the same log-sum-exp rule over such segments, O(parts) memory:

.. math::
    \\mathrm{lse}_i = \\log \\sum_{p \\to i} e^{l_p}, \\qquad
    \\mathrm{out}_i = \\sum_{p \\to i} e^{l_p - \\mathrm{lse}_i}\\, o_p
"""

from __future__ import annotations

import torch

__all__ = ["merge_rows"]


def merge_rows(outs: torch.Tensor, lses: torch.Tensor, row: torch.Tensor, num_rows: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial results ``outs`` ``[P, H, Dv]``, ``lses`` ``[P, H]`` into ``num_rows`` rows;
    part ``p`` belongs to row ``row[p]``. Returns ``(out [num_rows, H, Dv], lse [num_rows, H])``.

    A part with ``lse = -inf`` (no keys) contributes nothing; a row without a live part gets
    zeros and ``-inf``. Differentiable in ``outs`` and ``lses`` (as :func:`merge_attention`: the
    running maximum is a constant of the gradient, keyless parts get zero gradients, not NaN).

    >>> o = torch.tensor([[[1.0]], [[3.0]], [[5.0]]]); l = torch.zeros(3, 1)
    >>> out, lse = merge_rows(o, l, torch.tensor([0, 0, 1]), 2)
    >>> out.flatten().tolist(), [round(x, 4) for x in lse.flatten().tolist()]
    ([2.0, 5.0], [0.6931, 0.0])
    """
    P, H = lses.shape
    idx = row[:, None].expand(P, H)
    neg_inf = torch.full((num_rows, H), float("-inf"), dtype=lses.dtype, device=lses.device)
    top = neg_inf.scatter_reduce(0, idx, lses.detach(), "amax", include_self=True)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    # Keyless parts give exp(-inf) = 0; the double where keeps their gradient 0, not NaN.
    live = lses > float("-inf")
    e = torch.where(live, torch.exp(torch.where(live, lses, torch.zeros_like(lses)) - top[row]),
                    torch.zeros_like(lses))
    total = torch.zeros_like(top).index_add(0, row, e)
    has = total > 0
    safe = torch.where(has, total, torch.ones_like(total))
    lse = torch.where(has, top + torch.log(safe), neg_inf)
    w = e / safe[row]
    out = outs.new_zeros((num_rows,) + tuple(outs.shape[1:])).index_add(0, row, w[..., None].to(outs.dtype) * outs)
    return out, lse
