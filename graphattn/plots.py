"""Pictures of attention graphs (needs the ``plots`` extra: matplotlib).

Rows are queries ``i``, columns keys ``j``: a coloured cell is an edge ``(j, i)``, "query ``i``
attends key ``j``", coloured by the :class:`~graphattn.graph.EdgeLabel` of the rule that made it.
Images are built by binning the edge list, never an ``N x N`` matrix, so they work at any scale.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch

from graphattn._validate import check_int
from graphattn.graph import AttentionGraph, EdgeLabel

__all__ = ["LABEL_COLOURS", "adjacency_image", "label_image", "plot_adjacency", "panel_title", "atlas_figure",
           "save_atlas", "draw_star"]

#: RGB colour of each edge label in the pictures (colour-blind safe where neighbours meet:
#: window vs random vs global in BigBird, ring vs radical in the Star-Transformer).
LABEL_COLOURS: dict[EdgeLabel, str] = {
    EdgeLabel.CUSTOM: "#222222",
    EdgeLabel.FULL: "#222222",
    EdgeLabel.BAND: "#1f4e9c",
    EdgeLabel.DILATED: "#4f9bd9",
    EdgeLabel.BLOCK: "#12877a",
    EdgeLabel.GLOBAL: "#d7263d",
    EdgeLabel.RANDOM: "#f4a300",
    EdgeLabel.RING: "#1f4e9c",
    EdgeLabel.RADICAL: "#d7263d",
    EdgeLabel.AFFILIATED: "#7b3fa0",
    EdgeLabel.CONTEXTUAL: "#12877a",
    EdgeLabel.BUCKET: "#1f4e9c",
    EdgeLabel.CLUSTER: "#7b3fa0",
    EdgeLabel.SELF: "#8c8c8c",
}


def _rgb(hex_colour: str) -> list[float]:
    return [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]


def _check_graph(g) -> AttentionGraph:
    if not isinstance(g, AttentionGraph):
        raise TypeError(f"expected an AttentionGraph, got {type(g).__name__}")
    return g


def _bins(g: AttentionGraph, size: int) -> tuple[int, int, torch.Tensor]:
    """``(N, s, flat bin of every edge)``: node ``v`` falls in bin ``v * s // N``."""
    size = check_int("size", size, minimum=1)
    N = max(g.num_nodes, 1)
    s = min(size, N)
    key, query = g.edge_index.cpu()
    return N, s, (query * s // N) * s + key * s // N


def adjacency_image(g: AttentionGraph, *, size: int = 256) -> torch.Tensor:
    """The adjacency as an image ``[s, s]`` (rows queries, columns keys), ``s = min(size,
    num_nodes)``: the fraction of each pixel's query x key cell that holds edges (0 or 1 when
    ``num_nodes <= size``: one pixel per node pair)."""
    g = _check_graph(g)
    N, s, flat = _bins(g, size)
    counts = torch.bincount(flat, minlength=s * s).view(s, s).double()
    nodes_per_bin = torch.bincount(torch.arange(N) * s // N, minlength=s).double()
    return counts / (nodes_per_bin[:, None] * nodes_per_bin[None, :])


def label_image(g: AttentionGraph, *, size: int = 256) -> torch.Tensor:
    """RGB image ``[s, s, 3]`` in ``[0, 1]``: each pixel the colour (:data:`LABEL_COLOURS`) of the
    most frequent edge label in its cell (ties: the lower label), blended with white by the
    cell's edge density (:func:`adjacency_image`); white where no edge."""
    g = _check_graph(g)
    N, s, flat = _bins(g, size)
    num_labels = len(EdgeLabel)
    counts = torch.bincount(flat * num_labels + g.edge_label.cpu().long(), minlength=s * s * num_labels)
    major = counts.view(s * s, num_labels).argmax(dim=1)
    palette = torch.tensor([_rgb(LABEL_COLOURS[EdgeLabel(i)]) for i in range(num_labels)], dtype=torch.float64)
    density = adjacency_image(g, size=size).reshape(-1, 1)
    return (1.0 - density * (1.0 - palette[major])).view(s, s, 3)


def _ticks(g: AttentionGraph) -> list[int]:
    """First and last token, and the last node when extra nodes follow far enough apart."""
    N, nt = g.num_nodes, g.num_tokens
    ticks = [0, max(nt - 1, 0)]
    if N - nt > N // 8:
        ticks.append(N - 1)
    return sorted(set(ticks))


def plot_adjacency(g: AttentionGraph, ax=None, *, title: str | None = None, size: int = 256,
                   labels: bool = True):
    """Draw :func:`label_image` on a matplotlib axis, axes in node ids (``query i`` down,
    ``key j`` across), a dashed line between the tokens and the extra nodes; returns the axis."""
    import matplotlib.pyplot as plt

    g = _check_graph(g)
    ax = ax if ax is not None else plt.gca()
    N = max(g.num_nodes, 1)
    ax.imshow(label_image(g, size=size).numpy(), interpolation="nearest",
              extent=(-0.5, N - 0.5, N - 0.5, -0.5))
    # A white margin between the cells and the frame, so that a first or last row (a global
    # token, an appended node) is not drawn under the frame.
    margin = max(1.0, N / 48)
    ax.set_xlim(-0.5 - margin, N - 0.5 + margin)
    ax.set_ylim(N - 0.5 + margin, -0.5 - margin)
    if 0 < g.num_tokens < g.num_nodes:
        for line in (ax.axhline, ax.axvline):
            line(g.num_tokens - 0.5, color="#777777", linewidth=0.6, linestyle=(0, (3, 2)))
    ticks = _ticks(g)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=6, length=2, pad=1)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
        spine.set_color("#555555")
    if labels:
        ax.set_xlabel("key j", fontsize=7, labelpad=1)
        ax.set_ylabel("query i", fontsize=7, labelpad=0)
    if title:
        ax.set_title(title, fontsize=7, pad=3, linespacing=1.25)
    return ax


def panel_title(name: str, g: AttentionGraph) -> str:
    """``name``, then the token count, edges and mean keys per token query (and the largest when
    some queries attend many more: global rows)."""
    g = _check_graph(g)
    per_query = g.keys_per_query()[: g.num_tokens].double()
    mean = float(per_query.mean()) if per_query.numel() else 0.0
    most = int(per_query.max()) if per_query.numel() else 0
    spread = f" (max {most})" if most > 2 * mean else ""
    return f"{name}\nn={g.num_tokens}: {g.num_edges:,} edges, {mean:.1f}{spread} keys/query"


def atlas_figure(graphs: dict[str, AttentionGraph], *, title: str | None = None, caption: str | None = None,
                 cols: int = 5):
    """A matplotlib figure with one :func:`plot_adjacency` panel per graph (titled by
    :func:`panel_title`), a legend of the edge labels drawn, a figure title and a caption."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = check_int("cols", cols, minimum=1)
    cols = min(cols, max(len(graphs), 1))
    rows = math.ceil(len(graphs) / cols)
    head, foot = (0.55 if title else 0.1), (1.05 if caption else 0.6)
    width, height = 2.4 * cols, 2.7 * rows + head + foot
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    for ax in axes.flat[len(graphs):]:
        ax.axis("off")
    drawn = set()
    for ax, (name, g) in zip(axes.flat, graphs.items()):
        plot_adjacency(g, ax, title=panel_title(name, g))
        drawn.update(EdgeLabel(int(v)) for v in torch.unique(g.edge_label).tolist())
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - head / height, bottom=foot / height,
                        wspace=0.3, hspace=0.62)
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    by_colour: dict[str, list[str]] = {}  # one legend entry per colour: "band / ring / bucket"
    for lab in EdgeLabel:
        if lab in drawn:
            by_colour.setdefault(LABEL_COLOURS[lab], []).append(lab.name.lower())
    handles = [Patch(facecolor=c, label=" / ".join(names)) for c, names in by_colour.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, (foot - 0.62) / height), handlelength=1.2, columnspacing=1.2)
    if caption:
        wrapped = "\n".join(textwrap.wrap(caption, width=int(width * 17)))
        fig.text(0.5, 0.06 / height, wrapped, ha="center", va="bottom", fontsize=7, color="#333333")
    return fig


def save_atlas(graphs: dict[str, AttentionGraph], out_dir: Path, *, filename: str = "atlas.png",
               title: str | None = None, caption: str | None = None, dpi: int = 150) -> Path:
    """:func:`atlas_figure` saved as ``out_dir/filename`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = atlas_figure(graphs, title=title, caption=caption)
    path = out_dir / filename
    try:
        fig.savefig(path, dpi=check_int("dpi", dpi, minimum=1))
    finally:
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
