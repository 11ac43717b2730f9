"""Independent float64 reference: plain dense masked-softmax attention."""

import torch


def dense_attention(q, k, v, mask, bias_dense=None, scale=None):
    """q [Nq,H,D], k [Nk,H,D], v [Nk,H,Dv], mask bool [Nq,Nk] or [H,Nq,Nk]; float64 out.

    Rows without keys give zeros."""
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
    """[E, H] edge bias -> [H, Nq, Nk] dense (differentiable)."""
    H = bias.shape[1]
    out = torch.zeros(H, nq, nk, dtype=bias.dtype)
    return out.index_put((torch.arange(H)[:, None].expand(H, edge_index.shape[1]),
                          edge_index[1][None].expand(H, -1), edge_index[0][None].expand(H, -1)), bias.t())


def dense_mask(edge_index, nq, nk):
    m = torch.zeros(nq, nk, dtype=torch.bool)
    m[edge_index[1], edge_index[0]] = True
    return m
