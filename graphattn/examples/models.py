"""A small GPS network over graphattn attention graphs, used by the examples."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graphattn._validate import check_int
from graphattn.nn.gps import SparseGPSConv

__all__ = ["SparseGPSNet"]


class SparseGPSNet(nn.Module):
    """Encoder, ``num_layers`` :class:`~graphattn.nn.SparseGPSConv` layers (local ``GCNConv`` +
    sparse attention), linear node classifier.

    Virtual nodes (:class:`graphattn.transforms.AddVirtualNodes`) arrive with zero features; they
    get a learned embedding added on the rows of ``virtual_node_mask``.

    Shapes:
        - **x**: ``[N, in_channels]``; **edge_index**: ``[2, E]``; **attn_edge_index**: ``[2, E_attn]``
        - **virtual_node_mask** (optional): bool ``[N]``; **batch** (optional): ``[N]``
        - **output**: logits ``[N, num_classes]``
    """

    def __init__(self, in_channels: int, hidden: int, num_classes: int, *, num_layers: int = 2,
                 heads: int = 2, dropout: float = 0.0, norm: str | None = "batch_norm"):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.num_layers = check_int("num_layers", num_layers, minimum=1)
        self.encoder = nn.Linear(in_channels, hidden)
        self.virtual_embedding = nn.Parameter(torch.empty(hidden))
        self.layers = nn.ModuleList(
            SparseGPSConv(hidden, GCNConv(hidden, hidden), heads, dropout=dropout, norm=norm)
            for _ in range(num_layers))
        self.head = nn.Linear(hidden, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        nn.init.normal_(self.virtual_embedding, std=1.0)
        for layer in self.layers:
            layer.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, attn_edge_index: Tensor,
                virtual_node_mask: Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        h = self.encoder(x)
        if virtual_node_mask is not None:
            h = h + virtual_node_mask[:, None].to(h.dtype) * self.virtual_embedding
        for layer in self.layers:
            h = layer(h, edge_index, attn_edge_index, batch)
        return self.head(h)
