import torch

from graphattn import rules
from graphattn.bench.__main__ import main
from graphattn.bench.graphs import bare_band


def test_bare_band_peer_is_the_interior_band():
    n, r = 50, 3
    g = rules.band(n, radius=r)
    interior = g.query_slice(r, n - r).edge_index
    peer = bare_band(n, r)
    inside = (peer[1] >= r) & (peer[1] < n - r)
    assert torch.equal(peer[:, inside], interior)


def test_graphs_suite_runs_at_tiny_scale(capsys):
    assert main(["graphs", "--scale", "0.001", "--repeats", "1", "--only", "band"]) == 0
    out = capsys.readouterr().out
    assert "| band r=16" in out and "vs peer" in out
