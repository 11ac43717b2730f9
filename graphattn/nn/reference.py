"""The independent oracle: plain dense masked-softmax attention in float64.

Used by the test suite and by the GPU benchmark's exactness checks; also handy for users who
want to check a sparse pattern on small inputs. O(n^2) memory: small sizes only.
"""

from __future__ import annotations

import torch

__all__ = ["dense_attention", "dense_bias", "dense_mask"]


def dense_attention(q, k, v, mask, bias_dense=None, scale=None):
    """``(out, probabilities)`` of softmax attention restricted to ``mask``, in float64.

    q ``[Nq, H, D]``, k ``[Nk, H, D]``, v ``[Nk, H, Dv]``; mask bool ``[Nq, Nk]`` or
    ``[H, Nq, Nk]`` (``mask[i, j]``: query i attends key j); bias_dense ``[H, Nq, Nk]``.
    Rows without keys give zeros. Returns out ``[Nq, H, Dv]`` and p ``[H, Nq, Nk]``.

    >>> q = torch.zeros(3, 1, 2); v = torch.arange(3.).view(3, 1, 1)
    >>> out, _ = dense_attention(q, q, v, torch.ones(3, 3, dtype=torch.bool).tril())
    >>> out.flatten().tolist()
    [0.0, 0.5, 1.0]
    """
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    if bias_dense is not None:
        s = s + bias_dense.double()
    mask = mask if mask.dim() == 3 else mask[None]
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(mask.any(-1, keepdim=True), p, torch.zeros_like(p))
    return torch.einsum("hij,jhd->ihd", p, v), p


def dense_bias(edge_index, bias, nq, nk):
    """``[E, H]`` edge bias -> ``[H, Nq, Nk]`` dense, zeros off the edges (differentiable)."""
    H = bias.shape[1]
    out = torch.zeros(H, nq, nk, dtype=bias.dtype, device=bias.device)
    hh = torch.arange(H, device=bias.device)[:, None].expand(H, edge_index.shape[1])
    return out.index_put((hh, edge_index[1][None].expand_as(hh), edge_index[0][None].expand_as(hh)), bias.t())


def dense_mask(edge_index, nq, nk):
    """Bool ``[Nq, Nk]`` with ``mask[i, j]`` for every edge ``(j, i)``."""
    m = torch.zeros(nq, nk, dtype=torch.bool, device=edge_index.device)
    m[edge_index[1], edge_index[0]] = True
    return m
