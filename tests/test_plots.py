"""graphattn.plots: adjacency images against the dense mask, and the atlas figure."""

import pytest
import torch

from graphattn import AttentionGraph, EdgeLabel, rules
from graphattn.catalog import ATLAS_CAPTION, atlas_panels
from graphattn.plots import LABEL_COLOURS, adjacency_image, label_image, panel_title

WHITE = torch.ones(3, dtype=torch.float64)


def binned_dense(g, s):
    """Oracle: the dense mask pooled by a node-to-bin membership matrix."""
    N = g.num_nodes
    member = torch.zeros(s, N, dtype=torch.float64)
    member[torch.arange(N) * s // N, torch.arange(N)] = 1.0
    counts = member.sum(1)
    return member @ g.to_dense().double() @ member.T / (counts[:, None] * counts[None, :])


@pytest.mark.parametrize("g", [rules.band(7, radius=1), rules.bigbird(40, block_size=2, seed=0),
                               rules.star_transformer(5), rules.full(1)])
def test_adjacency_image_is_the_dense_mask_when_it_fits(g):
    assert torch.equal(adjacency_image(g), g.to_dense().double())


@pytest.mark.parametrize("n,size", [(100, 10), (101, 7), (64, 63)])
def test_adjacency_image_bins_the_dense_mask(n, size):
    g = rules.random(n, num_random_keys=5, seed=0) | rules.band(n, radius=2)
    torch.testing.assert_close(adjacency_image(g, size=size), binned_dense(g, size), rtol=0, atol=1e-12)


def test_label_image_colours_each_edge_by_its_rule():
    g = rules.bigbird(24, block_size=2, seed=0)
    image = label_image(g)
    labels = torch.full((24, 24), -1, dtype=torch.int64)
    labels[g.edge_index[1], g.edge_index[0]] = g.edge_label.long()
    for i in range(24):
        for j in range(24):
            want = WHITE if labels[i, j] < 0 else torch.tensor(
                [int(LABEL_COLOURS[EdgeLabel(int(labels[i, j]))][k:k + 2], 16) / 255 for k in (1, 3, 5)],
                dtype=torch.float64)
            torch.testing.assert_close(image[i, j], want)


def test_label_image_blends_a_bin_by_its_density_and_majority_label():
    # a 4-node graph in 2 x 2 bins: bin (0, 0) holds 3 of its 4 cells, two GLOBAL and one BAND
    ei = torch.tensor([[0, 1, 0], [0, 0, 1]])
    g = AttentionGraph.from_edge_index(ei, 4, edge_label=torch.tensor([int(EdgeLabel.GLOBAL), int(EdgeLabel.GLOBAL),
                                                                          int(EdgeLabel.BAND)]))
    image = label_image(g, size=2)
    red = torch.tensor([int(LABEL_COLOURS[EdgeLabel.GLOBAL][k:k + 2], 16) / 255 for k in (1, 3, 5)],
                       dtype=torch.float64)
    torch.testing.assert_close(image[0, 0], 1 - 0.75 * (1 - red))
    torch.testing.assert_close(image[1, 1], WHITE)


def test_bad_arguments():
    with pytest.raises(TypeError, match="expected an AttentionGraph, got Tensor"):
        adjacency_image(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="expected size >= 1, got 0"):
        label_image(rules.full(2), size=0)


def test_panel_title_has_size_edges_and_keys_per_query():
    assert panel_title("band r=1", rules.band(8, radius=1)) == "band r=1\nn=8: 22 edges, 2.8 keys/query"
    # global rows attend every key: the largest count is shown beside the mean
    assert panel_title("g", rules.global_tokens(8, global_indices=[0])) == "g\nn=8: 22 edges, 2.8 (max 8) keys/query"


def test_atlas_figure_panels_are_labelled(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from graphattn.plots import atlas_figure, save_atlas

    graphs = {name: build() for name, build in atlas_panels().items()}
    fig = atlas_figure(graphs, title="atlas", caption=ATLAS_CAPTION)
    try:
        drawn = [ax for ax in fig.axes if ax.get_title()]
        assert len(drawn) == len(graphs)
        for ax, (name, g) in zip(drawn, graphs.items()):
            assert ax.get_title() == panel_title(name, g)
            assert " edges, " in ax.get_title() and ax.get_title().endswith(" keys/query")
            assert ax.get_xlabel() == "key j" and ax.get_ylabel() == "query i"
        assert fig._suptitle.get_text() == "atlas"
        assert fig.legends and any("global" in t.get_text() for t in fig.legends[0].get_texts())
    finally:
        plt.close(fig)
    path = save_atlas({"band": graphs["band r=4"]}, tmp_path, dpi=50)
    assert path == tmp_path / "atlas.png" and path.read_bytes()[:4] == b"\x89PNG"
