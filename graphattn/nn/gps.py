"""GPS layer with sparse global attention over an attention graph."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Sequential

from graphattn._validate import check_float, check_int
from graphattn.graph import AttentionGraph
from graphattn.nn.attention import GraphAttention

__all__ = ["SparseGPSConv"]


class SparseGPSConv(torch.nn.Module):
    r"""The GPS graph-transformer layer (Rampasek et al., 2022, "Recipe for a General, Powerful,
    Scalable Graph Transformer") with its global attention restricted to an attention graph, as
    in Exphormer (Shirzad et al., 2023).

    Same recipe and parameters as :class:`torch_geometric.nn.GPSConv`, except that the global
    part is :class:`~graphattn.nn.GraphAttention` over ``attn_edge_index`` instead of dense
    attention over all nodes of each graph:

    .. math::
        \mathbf{h}_L &= \mathrm{Norm}_1\big(\mathbf{x} + \mathrm{Dropout}(\mathrm{MPNN}(\mathbf{x},
            \mathcal{E}))\big) \\
        \mathbf{h}_A &= \mathrm{Norm}_2\big(\mathbf{x} + \mathrm{Dropout}(\mathrm{Attn}(\mathbf{x},
            \mathcal{E}_{attn}))\big) \\
        \mathbf{out} &= \mathrm{Norm}_3\big(\mathbf{h} + \mathrm{MLP}(\mathbf{h})\big), \quad
            \mathbf{h} = \mathbf{h}_L + \mathbf{h}_A

    where query ``i`` attends exactly the keys ``j`` with ``(j, i)`` in ``attn_edge_index``. With a
    batch produced by PyG from graphs transformed by :mod:`graphattn.transforms`,
    ``attn_edge_index`` is block diagonal, so no node attends another graph; with the complete
    graph of every graph (all pairs) as ``attn_edge_index`` the layer computes exactly what
    ``GPSConv`` computes. Cost: ``O(|E_attn| d)`` instead of ``O(sum_g n_g^2 d)``.

    Args:
        channels: node feature width ``C`` (divisible by ``heads``).
        conv: the local message-passing layer (``conv(x, edge_index, **kwargs)``), or ``None`` to
            skip the local part.
        heads: attention heads.
        dropout: dropout on the local and global outputs and inside the MLP (as in GPSConv).
        act, act_kwargs: the MLP activation (PyG's ``activation_resolver``).
        norm, norm_kwargs: the normalisation (PyG's ``normalization_resolver``; ``None`` for
            none). Norms that take ``batch`` (e.g. ``"graph_norm"``, ``"layer_norm"`` in graph
            mode) get it.
        attn_kwargs: keyword arguments of :class:`~graphattn.nn.GraphAttention` (``dropout`` on
            the attention probabilities, ``bias``, ``num_relative``).

    Shapes:
        - **x**: ``[N, C]``
        - **edge_index**: the local graph, anything ``conv`` accepts
        - **attn_edge_index**: ``[2, E_attn]`` int64 (row 0 key, row 1 query, unique edges) or an
          :class:`~graphattn.AttentionGraph` over the ``N`` nodes
        - **batch** (optional): ``[N]`` graph id of each node, used only by the norms
        - **output**: ``[N, C]``
    """

    def __init__(self, channels: int, conv: torch.nn.Module | None, heads: int = 1, dropout: float = 0.0,
                 act: str = "relu", act_kwargs: dict[str, Any] | None = None,
                 norm: str | None = "batch_norm", norm_kwargs: dict[str, Any] | None = None,
                 attn_kwargs: dict[str, Any] | None = None):
        super().__init__()
        from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

        self.channels = check_int("channels", channels, minimum=1)
        self.heads = check_int("heads", heads, minimum=1)
        if channels % heads:
            raise ValueError(f"expected channels divisible by heads, got {channels} and {heads}")
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if conv is not None and not isinstance(conv, torch.nn.Module):
            raise TypeError(f"expected conv to be a torch.nn.Module or None, got {type(conv).__name__}")
        self.conv = conv
        self.attn = GraphAttention(channels, heads, **(attn_kwargs or {}))
        self.mlp = Sequential(
            Linear(channels, channels * 2),
            activation_resolver(act, **(act_kwargs or {})),
            Dropout(dropout),
            Linear(channels * 2, channels),
            Dropout(dropout),
        )
        norm_kwargs = norm_kwargs or {}
        self.norm1 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm2 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm3 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm_with_batch = (self.norm1 is not None
                                and "batch" in inspect.signature(self.norm1.forward).parameters)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        from torch_geometric.nn.inits import reset

        if self.conv is not None and hasattr(self.conv, "reset_parameters"):
            self.conv.reset_parameters()
        self.attn.reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def _norm(self, norm, h: Tensor, batch: Tensor | None) -> Tensor:
        if norm is None:
            return h
        return norm(h, batch=batch) if self.norm_with_batch else norm(h)

    def forward(self, x: Tensor, edge_index, attn_edge_index, batch: Tensor | None = None, **kwargs) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape [N, {self.channels}], got "
                             f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not isinstance(attn_edge_index, (Tensor, AttentionGraph)):
            raise TypeError(f"expected attn_edge_index to be an edge_index tensor or an AttentionGraph, "
                            f"got {type(attn_edge_index).__name__}")
        hs = []
        if self.conv is not None:  # local message passing
            h = self.conv(x, edge_index, **kwargs)
            h = F.dropout(h, p=self.dropout, training=self.training)
            hs.append(self._norm(self.norm1, h + x, batch))
        # Global attention, sparse: only the edges of the attention graph.
        h = self.attn(x, attn_edge_index)
        h = F.dropout(h, p=self.dropout, training=self.training)
        hs.append(self._norm(self.norm2, h + x, batch))
        out = sum(hs)
        out = out + self.mlp(out)
        return self._norm(self.norm3, out, batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, conv={self.conv}, heads={self.heads})"
