"""graphattn.catalog: the atlas' variants, their edge estimates and the picture's panels."""

import pytest
import torch

from graphattn import EdgeLabel, rules
from graphattn.catalog import atlas_panels, clustered_vectors, default_rules, edge_estimates


@pytest.mark.parametrize("n", [16, 33, 100, 512])
def test_edge_estimates_match_the_built_graphs(n):
    estimates = edge_estimates(n)
    builders = default_rules(n)
    assert list(estimates) == list(builders)
    for name, build in builders.items():
        edges = build().num_edges
        # exact or expected edges, or an upper bound (LSH's same-bucket pairs count self pairs)
        assert 0.5 * estimates[name] <= edges <= 1.05 * estimates[name], (name, edges, estimates[name])


@pytest.mark.parametrize("n", [64, 512])
def test_table_variants_are_sparse(n):
    # block sizes and chunks scale with n: BigBird with blocks of 64 is full attention at 512
    for name, build in default_rules(n).items():
        if name != "full":
            assert build().density() < 0.5, name


def test_every_rule_is_in_the_table_and_the_picture():
    """A new rule that the atlas leaves out fails here."""
    for names in (default_rules(64), atlas_panels()):
        used = {name.split()[0] for name in names}
        assert used == set(rules.RULES)


def test_panels_show_structure():
    for name, build in atlas_panels().items():
        g = build()
        # one pixel per node pair at the default image size, a few pixels per token
        assert 32 <= g.num_nodes <= 256, name
        if name == "full":
            assert g.density() == 1.0
        else:  # sparse enough that the pattern, not a black square, is what shows
            assert g.density() < 0.3, (name, g.density())


def test_bigbird_panel_has_window_random_and_global_blocks():
    g = atlas_panels()["bigbird b=4"]()
    assert set(torch.unique(g.edge_label).tolist()) == {EdgeLabel.BAND, EdgeLabel.GLOBAL, EdgeLabel.RANDOM}


def test_clustered_vectors_are_numbered_cluster_by_cluster():
    x = clustered_vectors(128, 8)
    assert x.shape == (128, 32)
    assert torch.equal(x, clustered_vectors(128, 8))  # seeded
    # routing attention on them finds the 8 clusters of 16 consecutive tokens
    g = rules.kmeans(x, num_clusters=8, seed=0)
    assert torch.equal(g.to_dense(), rules.block_local(128, block_size=16).to_dense())
