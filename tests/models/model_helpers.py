"""Shared oracles for the model tests: dependency patterns by gradients, reachability."""

import torch


def dependency(fn, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Bool [N_out, N_in]: output row i has a nonzero gradient with respect to input row j.

    ``fn(x)`` maps ``x [N, E]`` to ``[M, E']``. Each output row is contracted with a random
    vector (a plain sum would vanish through a final LayerNorm), then back-propagated."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    rows = []
    for i in range(out.shape[0]):
        (g,) = torch.autograd.grad((out[i] * w[i]).sum(), x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros(x.shape[0], dtype=torch.bool) if g is None else g.abs().sum(-1) > 0)
    return torch.stack(rows)


def reachability(masks) -> torch.Tensor:
    """Bool [N, N]: output i depends on input j through layers whose dense masks are ``masks``
    (layer 0 first), with the residual path (identity) in every layer."""
    n = masks[0].shape[0]
    reach = torch.eye(n, dtype=torch.bool)
    for m in masks:
        step = (m | torch.eye(n, dtype=torch.bool)).double()
        reach = (step @ reach.double()) > 0
    return reach


def band_mask(n: int, lo: int, hi: int) -> torch.Tensor:
    """Bool [n, n], True where lo <= j - i <= hi."""
    d = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    return (d >= lo) & (d <= hi)
