import itertools

import pytest
import torch

from graphattn.rules._build import global_node_types, window_rows


def _naive(start, stop, offsets, n, extra):
    edges = []
    for i in range(start, stop):
        edges += [(i + o, i) for o in offsets if 0 <= i + o < n]
        edges += [(x, i) for x in extra]
    return edges


@pytest.mark.parametrize("n, offsets, extra", itertools.product(
    [0, 1, 3, 7, 20], [[], [0], [-2, -1, 0, 1, 2], [-5, 0, 3], [-9, 9]], [[], [20], [20, 21, 22]]))
def test_window_rows_matches_a_loop(n, offsets, extra):
    for start, stop in [(0, n), (min(2, n), n), (0, max(n - 3, 0))]:
        ei = window_rows(start, stop, torch.tensor(offsets, dtype=torch.int64), n,
                         extra=torch.tensor(extra, dtype=torch.int64))
        assert [tuple(e) for e in ei.t().tolist()] == _naive(start, stop, offsets, n, extra)


def test_global_node_types():
    assert global_node_types(3, 2).tolist() == [0, 0, 0, 1, 1]
