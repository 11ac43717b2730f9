"""Renumber the nodes of a PyG ``Data`` by a node ordering (see :mod:`graphattn.transforms.ordering`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch_geometric.transforms import BaseTransform

from graphattn.transforms._data import check_data, is_index_key, node_level_keys

__all__ = ["PermuteNodes"]


class PermuteNodes(BaseTransform):
    """Renumber nodes so that node ``k`` of the output is node ``order[k]`` of the input, with
    ``order = order_fn(data[structure_key], data.num_nodes)`` (e.g. :func:`rcm_order`,
    :func:`bfs_order`, :func:`spectral_order`).

    - Node-level tensors (``x``, ``y``, ``pos``, masks, ...: ``num_nodes`` rows along PyG's
      concatenation dim; keys with ``"index"`` or ``"edge"`` excluded) are permuted along that dim.
    - Node-id tensors, i.e. every key containing ``"index"`` (``edge_index``,
      ``attn_edge_index``, ...; PyG's rule for the attributes it offsets when batching) and
      ``face``, are relabelled: old id ``u`` becomes ``order^-1[u]``.
    - Edges keep their order, so ``edge_attr``, ``attn_edge_label`` and every other edge-level
      attribute stay aligned; edge lists are therefore no longer sorted by query (attention
      layers accept any order of unique edges).

    The input is never modified. The ordering is computed from ``data[structure_key]`` (the
    local graph by default).

    >>> from torch_geometric.data import Data
    >>> from graphattn.transforms.ordering import rcm_order
    >>> data = Data(x=torch.arange(3.)[:, None], edge_index=torch.tensor([[0, 2], [2, 1]]))
    >>> out = PermuteNodes(rcm_order)(data)
    >>> out.x.flatten().tolist(), out.edge_index.tolist()
    ([1.0, 2.0, 0.0], [[2, 1], [1, 0]])
    """

    def __init__(self, order_fn: Callable[[torch.Tensor, int], torch.Tensor], *,
                 structure_key: str = "edge_index"):
        if not callable(order_fn):
            raise TypeError(f"expected order_fn to be a callable (edge_index, num_nodes) -> permutation, "
                            f"got {type(order_fn).__name__}")
        if not isinstance(structure_key, str):
            raise TypeError(f"expected structure_key to be a str, got {type(structure_key).__name__}")
        self.order_fn = order_fn
        self.structure_key = structure_key

    def forward(self, data):
        n = check_data(data, "PermuteNodes")
        edge_index = data.get(self.structure_key) if self.structure_key in data else None
        if edge_index is None:
            edge_index = torch.empty(2, 0, dtype=torch.int64)
        order = self.order_fn(edge_index, n)
        if not isinstance(order, torch.Tensor) or order.dtype.is_floating_point or order.shape != (n,):
            raise ValueError(f"PermuteNodes: expected order_fn to return an integer tensor of shape [{n}], "
                             f"got {order!r}")
        order = order.long().cpu()
        inverse = torch.full((n,), -1, dtype=torch.int64)
        inverse[order] = torch.arange(n)
        if n and int(inverse.min()) < 0:
            raise ValueError(f"PermuteNodes: expected order_fn to return a permutation of range({n}), "
                             f"got {order.tolist() if n <= 20 else order}")
        for key in node_level_keys(data):
            value = data[key]
            data[key] = value.index_select(data.__cat_dim__(key, value) % value.dim(), order.to(value.device))
        for key in [k for k in data.keys() if is_index_key(k)]:
            value = data[key]
            if isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and value.numel():
                if int(value.min()) < 0 or int(value.max()) >= n:
                    raise ValueError(f"PermuteNodes: expected data[{key!r}] to hold node ids in [0, {n}), "
                                     f"got values in [{int(value.min())}, {int(value.max())}]")
                data[key] = inverse.to(value.device)[value]
        return data

    def __repr__(self) -> str:
        name = getattr(self.order_fn, "__name__", repr(self.order_fn))
        return f"{type(self).__name__}({name})"
