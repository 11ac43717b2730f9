"""Helpers shared by the transforms: reading PyG ``Data`` attributes by their batching role.

PyG decides how an attribute is batched from its key (``Data.__cat_dim__`` / ``__inc__``): a key
containing ``"index"`` (or the key ``"face"``) holds node ids, is concatenated along its last dim
and offset by the number of nodes of the graphs before it. The transforms rely on the same rule:
attention edges live under such a key, so batching keeps each graph's attention inside its own
node range, and node-id attributes are exactly the ones to relabel when nodes are permuted.
"""

from __future__ import annotations

import hashlib

import torch

from graphattn.graph import AttentionGraph

__all__ = ["check_data", "is_index_key", "node_level_keys", "label_key_for", "check_edge_key",
           "read_attention", "write_attention", "merge", "fingerprint", "derive_seed"]


def check_data(data, transform: str):
    """The ``Data`` a transform works on, with a known node count."""
    from torch_geometric.data import Batch, Data

    if isinstance(data, Batch):
        raise TypeError(f"{transform}: expected one graph (a torch_geometric.data.Data), got a Batch; "
                        "apply the transform per graph, e.g. as a dataset transform, before batching")
    if not isinstance(data, Data):
        raise TypeError(f"{transform}: expected a torch_geometric.data.Data, got {type(data).__name__}")
    if data.num_nodes is None:
        raise ValueError(f"{transform}: expected data with a known number of nodes (set data.num_nodes)")
    return int(data.num_nodes)


def is_index_key(key: str) -> bool:
    """PyG's rule for node-id attributes (``Data.__inc__``): offset by ``num_nodes`` when batched."""
    return "index" in key or key == "face"


def node_level_keys(data) -> list[str]:
    """Keys of node-level tensors: ``value.shape[cat_dim] == num_nodes`` (PyG's test), excluding
    node-id attributes (``is_index_key``) and any key containing ``"edge"`` (an edge attribute
    that happens to have ``num_nodes`` rows)."""
    n = data.num_nodes
    keys = []
    for key, value in data.items():
        if key == "num_nodes" or is_index_key(key) or "edge" in key or not isinstance(value, torch.Tensor):
            continue
        if value.dim() == 0:
            continue
        if value.shape[data.__cat_dim__(key, value)] == n:
            keys.append(key)
    return keys


def check_edge_key(key, transform: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{transform}: expected key to be a str, got {type(key).__name__}")
    if "index" not in key:
        raise ValueError(f"{transform}: expected key to contain 'index' (PyG offsets only such keys "
                         f"per graph when batching), got {key!r}")
    if key == "edge_index":
        raise ValueError(f"{transform}: expected key other than 'edge_index' (the local graph that "
                         "message passing uses), got 'edge_index'")
    return key


def label_key_for(key: str, transform: str) -> str:
    """``attn_edge_index`` -> ``attn_edge_label``: the edge labels of an attention-edge key.

    The label key must not contain ``"index"``, or PyG would offset the labels like node ids."""
    head, _, tail = key.rpartition("index")
    label = f"{head}label{tail}"
    if is_index_key(label):
        raise ValueError(f"{transform}: the label key derived from key={key!r} is {label!r}, which "
                         "PyG would offset like node ids; use a key with 'index' only once")
    return label


def read_attention(data, key: str, label_key: str | None, num_nodes: int, transform: str):
    """The attention edges already stored under ``key`` as an AttentionGraph, or ``None``."""
    edge_index = data.get(key) if key in data else None
    if edge_index is None:
        return None
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"{transform}: expected data[{key!r}] to be a tensor, got {type(edge_index).__name__}")
    labels = None
    if label_key is not None and label_key in data and data[label_key] is not None:
        labels = data[label_key]
        if not isinstance(labels, torch.Tensor) or labels.shape != (edge_index.shape[-1],):
            raise ValueError(f"{transform}: expected data[{label_key!r}] of shape [{edge_index.shape[-1]}] "
                             f"matching data[{key!r}], got "
                             f"{list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    return AttentionGraph.from_edge_index(edge_index, num_nodes, edge_label=labels)


def write_attention(data, key: str, label_key: str | None, graph: AttentionGraph) -> None:
    """Store ``graph.edge_index`` under ``key`` and, when asked, its labels (int64) under ``label_key``."""
    data[key] = graph.edge_index
    if label_key is not None:
        data[label_key] = graph.edge_label.long()


def merge(existing: AttentionGraph | None, new: AttentionGraph) -> AttentionGraph:
    """Union (labels of the existing edges win on shared edges); node types are not data, so the
    union is taken over plain token graphs."""
    if existing is None:
        return new
    plain = AttentionGraph.from_edge_index(new.edge_index, new.num_nodes, edge_label=new.edge_label)
    return existing | plain


def fingerprint(data, num_nodes: int) -> bytes:
    """A digest of the graph (node count, ``edge_index`` and ``x``), stable across runs and
    processes (unlike Python's ``hash``): graphs that differ in structure or features get
    different digests."""
    h = hashlib.blake2b(digest_size=16)
    h.update(int(num_nodes).to_bytes(8, "little"))
    for key in ("edge_index", "x"):
        value = data.get(key) if key in data else None
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            h.update(str((value.dtype, tuple(value.shape))).encode())
            h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.digest()


def derive_seed(*parts) -> int:
    """A 63-bit seed from ints and bytes (blake2b), for per-graph, per-round random draws."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p if isinstance(p, bytes) else int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1

