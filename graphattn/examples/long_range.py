"""An Exphormer-style model on a synthetic long-range task local message passing cannot solve.

Task ("broadcast the source colour"): each graph is a path of ``num_nodes`` nodes. One node, at a
random position, is the source and carries one of ``num_colours`` colours in its features; all
other features are zero. Every node must predict the source's colour. After ``L`` rounds of
message passing a node knows only its ``L``-hop neighbourhood, so nodes farther than ``L`` hops
from the source (most of a long path) are at chance, ``1 / num_colours``, whatever the model.

Exphormer (Shirzad et al., 2023) adds to the local graph an attention graph with expander edges
(every pair of nodes a few hops apart) and virtual nodes (every pair two hops apart). The same
GPS network of the same depth (:class:`~graphattn.examples.models.SparseGPSNet`) is trained with
attention over local edges only (the control) and over local + expander + virtual-node edges;
:func:`compare` runs both.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from graphattn._validate import check_float, check_int
from graphattn.examples.models import SparseGPSNet

__all__ = ["make_graphs", "train", "compare"]


def make_graphs(num_graphs: int, *, num_nodes: int = 40, num_colours: int = 4, seed: int = 0) -> list:
    """``num_graphs`` path graphs (``Data``) with ``x = [is_source, one_hot(colour) * is_source]``,
    ``y`` = the source colour on every node and ``source_distance`` = hops to the source."""
    from torch_geometric.data import Data

    num_graphs = check_int("num_graphs", num_graphs, minimum=1)
    n = check_int("num_nodes", num_nodes, minimum=2)
    c = check_int("num_colours", num_colours, minimum=2)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    sources = torch.randint(0, n, (num_graphs,), generator=gen)
    colours = torch.randint(0, c, (num_graphs,), generator=gen)
    line = torch.arange(n - 1)
    edge_index = torch.stack([torch.cat([line, line + 1]), torch.cat([line + 1, line])])  # undirected path
    graphs = []
    for s, col in zip(sources.tolist(), colours.tolist()):  # one Data per graph
        x = torch.zeros(n, 1 + c)
        x[s, 0] = 1.0
        x[s, 1 + col] = 1.0
        graphs.append(Data(x=x, edge_index=edge_index.clone(), y=torch.full((n,), col),
                           source_distance=(torch.arange(n) - s).abs(), num_nodes=n))
    return graphs


def _attention_transform(expander_degree: int, virtual_nodes: int, seed: int):
    from torch_geometric.transforms import Compose

    from graphattn.transforms import AddExpanderEdges, AddLocalEdges, AddVirtualNodes

    steps = [AddLocalEdges()]
    if expander_degree:
        steps.append(AddExpanderEdges(expander_degree, seed=seed))
    steps.append(AddVirtualNodes(virtual_nodes))
    return Compose(steps)


def train(*, expander_degree: int = 3, virtual_nodes: int = 1, num_layers: int = 2, num_nodes: int = 40,
          num_colours: int = 4, num_train: int = 128, num_test: int = 64, hidden: int = 32, heads: int = 4,
          epochs: int = 30, batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train a ``num_layers``-layer GPS network whose attention graph is local edges + self-loops,
    plus a ``expander_degree``-regular expander (none when 0) and ``virtual_nodes`` virtual
    nodes (none when 0); evaluate on ``num_test`` fresh graphs.

    Mini-batches come from PyG's ``DataLoader``, so the attention edges are batched by PyG's
    offsets (block diagonal). Deterministic for a given ``seed``; torch's global RNG is forked.

    Returns a dict: ``test_acc`` (all real nodes), ``far_acc`` (nodes more than ``num_layers``
    hops from the source, out of reach of local message passing), ``near_acc``, ``chance``
    (``1 / num_colours``), ``far_majority`` (accuracy on the far nodes of the best constant guess,
    the most a model blind to the source can reach there), ``loss`` (last epoch's mean), ``time_s`` (training wall time),
    ``attention_edges_per_node``.
    """
    from torch_geometric.loader import DataLoader

    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0)
    seed = check_int("seed", seed)
    num_layers = check_int("num_layers", num_layers, minimum=1)
    transform = _attention_transform(check_int("expander_degree", expander_degree, minimum=0),
                                     check_int("virtual_nodes", virtual_nodes, minimum=0), seed)
    train_set = [transform(g) for g in make_graphs(num_train, num_nodes=num_nodes, num_colours=num_colours,
                                                   seed=2 * seed)]
    test_set = [transform(g) for g in make_graphs(num_test, num_nodes=num_nodes, num_colours=num_colours,
                                                  seed=2 * seed + 1)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SparseGPSNet(1 + num_colours, hidden, num_colours, num_layers=num_layers, heads=heads)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        model.train()
        for _ in range(epochs):
            total, count = 0.0, 0
            for b in loader:
                opt.zero_grad()
                out = model(b.x, b.edge_index, b.attn_edge_index, b.virtual_node_mask, b.batch)
                loss = F.cross_entropy(out, b.y)  # virtual nodes carry y = -100: ignored
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * b.num_graphs, count + b.num_graphs
        elapsed = time.perf_counter() - start
        model.eval()
        test = next(iter(DataLoader(test_set, batch_size=len(test_set))))
        with torch.no_grad():
            pred = model(test.x, test.edge_index, test.attn_edge_index, test.virtual_node_mask,
                         test.batch).argmax(-1)
    real = ~test.virtual_node_mask
    far = real & (test.source_distance > num_layers)
    near = real & ~far
    acc = lambda m: float((pred[m] == test.y[m]).float().mean())  # noqa: E731
    far_majority = float(torch.bincount(test.y[far], minlength=num_colours).max()) / max(int(far.sum()), 1)
    return {"test_acc": acc(real), "far_acc": acc(far), "near_acc": acc(near), "chance": 1.0 / num_colours,
            "far_majority": far_majority,
            "loss": total / count, "time_s": elapsed,
            "attention_edges_per_node": test.attn_edge_index.shape[1] / int(real.sum())}


def compare(**kwargs) -> dict:
    """:func:`train` twice with the same settings: ``"local"`` (attention over local edges only)
    and ``"exphormer"`` (plus expander and virtual nodes; ``expander_degree`` and
    ``virtual_nodes`` from ``kwargs``, default 3 and 1)."""
    exphormer = train(**kwargs)
    local = train(**{**kwargs, "expander_degree": 0, "virtual_nodes": 0})
    return {"local": local, "exphormer": exphormer}
