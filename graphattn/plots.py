"""Pictures of attention graphs (needs the ``plots`` extra: matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from graphattn._validate import check_int
from graphattn.graph import AttentionGraph

__all__ = ["adjacency_image", "plot_adjacency", "save_atlas", "draw_star"]


def adjacency_image(g: AttentionGraph, *, size: int = 256) -> torch.Tensor:
    """The adjacency as an image ``[s, s]`` (rows queries, columns keys), ``s = min(size,
    num_nodes)``: the fraction of each pixel's query x key cell that holds edges. Built by
    binning the edge list (no ``N x N`` matrix), so it works at any scale."""
    if not isinstance(g, AttentionGraph):
        raise TypeError(f"expected an AttentionGraph, got {type(g).__name__}")
    size = check_int("size", size, minimum=1)
    N = max(g.num_nodes, 1)
    s = min(size, N)
    key, query = g.edge_index.cpu()
    row, col = query * s // N, key * s // N
    counts = torch.bincount(row * s + col, minlength=s * s).view(s, s).double()
    edges_per_bin = torch.bincount(torch.arange(N) * s // N, minlength=s).double()
    return counts / (edges_per_bin[:, None] * edges_per_bin[None, :])


def plot_adjacency(g: AttentionGraph, ax=None, *, title: str | None = None, size: int = 256):
    """Draw :func:`adjacency_image` on a matplotlib axis; returns the axis."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.gca()
    ax.imshow(adjacency_image(g, size=size).numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def save_atlas(graphs: dict[str, AttentionGraph], out_dir: Path, *, filename: str = "atlas.png") -> Path:
    """One panel per graph (rows: queries, columns: keys) saved as ``out_dir/filename``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = min(5, max(len(graphs), 1))
    rows = math.ceil(len(graphs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, g) in zip(axes.flat, graphs.items()):
        ax.axis("on")
        plot_adjacency(g, ax, title=name)
    fig.tight_layout()
    path = out_dir / filename
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_star(g: AttentionGraph, ax=None):
    """Draw a Star-Transformer graph as a graph: satellites on a ring, the relay at the centre,
    embedding nodes outside; ring and radical edges in two colours."""
    import matplotlib.pyplot as plt
    import networkx as nx

    from graphattn.graph import EdgeLabel, NodeType

    ax = ax if ax is not None else plt.gca()
    types = g.node_type.tolist()
    n = types.count(int(NodeType.TOKEN))
    pos = {}
    for v, t in enumerate(types):
        if t == NodeType.TOKEN:
            a = 2 * math.pi * v / n
            pos[v] = (math.cos(a), math.sin(a))
        elif t == NodeType.EMBEDDING:
            a = 2 * math.pi * (v - n) / n
            pos[v] = (1.5 * math.cos(a), 1.5 * math.sin(a))
        else:
            pos[v] = (0.0, 0.0)
    G = g.without_self_loops().to_networkx()
    colours = ["tab:blue" if d["label"] == EdgeLabel.RING.name.lower() else "tab:orange"
               for _, _, d in G.edges(data=True)]
    node_colours = ["tab:red" if t == NodeType.RELAY else "lightgrey" if t == NodeType.EMBEDDING else "tab:blue"
                    for t in types]
    nx.draw_networkx(G, pos, ax=ax, node_size=120, font_size=6, edge_color=colours,
                     node_color=node_colours, arrowsize=6)
    ax.set_axis_off()
    return ax
