"""The differentiable halo exchange on its own: this rank's rows -> its extended rows.

:func:`graphattn.distributed.graph_attention` runs this exchange (the plan's ``halo``
:class:`~graphattn.distributed.route.Route`) inside its attention step; :func:`exchange_rows`
exposes it for other per-node data (features a custom layer needs at the halo). As with any
collective autograd (DistributedDataParallel's gradient all-reduce, for one), every rank must
run the backward of every exchange it ran forward, in the same order: stacked layers are ordered
by their data dependencies; independent exchanges in one autograd graph run in autograd's order
(reverse creation), which is the same on every rank running the same program.
"""

from __future__ import annotations

import torch

from graphattn.distributed.faults import records_failures
from graphattn.distributed.route import route_backward, route_forward

__all__ = ["exchange_rows", "HaloExchange"]


class HaloExchange(torch.autograd.Function):
    """``[num_local, ...]`` rows of this rank -> ``[num_extended, ...]`` rows: the local rows and
    every remote row the shard's halo edges need, in increasing global id (see
    :class:`~graphattn.distributed.ShardPlan`). Backward sends the gradients of the remote rows
    back to their owners."""

    @staticmethod
    def forward(ctx, x, plan, group):
        ctx.plan, ctx.group = plan, group
        return route_forward(x, plan.halo, group, "halo exchange")

    @staticmethod
    def backward(ctx, grad_ext):
        return route_backward(grad_ext, ctx.plan.halo, ctx.group, "halo exchange"), None, None


@records_failures
def exchange_rows(x: torch.Tensor, plan, group=None) -> torch.Tensor:
    """Differentiable halo exchange of ``x`` ``[plan.num_local, ...]`` (a collective: every rank
    of the plan's group calls it). Returns ``[plan.num_extended, ...]``: row ``p`` holds node
    ``plan.extended_ids[p]``; the local rows are ``[plan.offset, plan.offset + plan.num_local)``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != plan.num_local:
        raise ValueError(f"expected x with {plan.num_local} rows (this rank's shard), got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.device != plan.device:
        raise ValueError(f"expected x on the plan's device {plan.device}, got {x.device} "
                         "(use plan.to(device))")
    return HaloExchange.apply(x, plan, group)
