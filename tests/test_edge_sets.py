"""Tests for graphattn._edge_sets: the CSR pointer against PyG's, and that planning and running
attention need no PyG import (PyG costs seconds and ~180 MiB of resident memory to load)."""

import subprocess
import sys

import pytest
import torch
from torch_geometric.utils import cumsum

from graphattn._edge_sets import exclusive_cumsum


@pytest.mark.parametrize("x", [torch.tensor([3, 0, 2]), torch.zeros(0, dtype=torch.int64),
                               torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1.5, -2.0, 0.25])],
                         ids=["int64", "empty", "int32", "float"])
def test_exclusive_cumsum_equals_pyg_cumsum(x):
    out = exclusive_cumsum(x)
    assert out.dtype == x.dtype and torch.equal(out, cumsum(x))


def test_planning_and_attention_import_no_pyg():
    code = (
        "import sys, torch\n"
        "from graphattn import rules\n"
        "from graphattn.nn import graph_attention\n"
        "q = torch.randn(1000, 2, 8)\n"
        "for g in (rules.longformer(1000, radius=128, global_indices=[0]), rules.band(1000, radius=100),\n"
        "          rules.bigbird(1000, seed=0), rules.random(1000, num_random_keys=8, seed=0)):\n"
        "    graph_attention(q, q, q, g)\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch_geometric')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
