import pytest

from graphattn.bench import attention


def test_edge_flops_count_forward_and_backward():
    assert attention.edge_flops(10, 2, 8, "fwd") == 4 * 10 * 2 * 8
    assert attention.edge_flops(10, 2, 8, "fwd+bwd") == 3.5 * 4 * 10 * 2 * 8


def test_floor_and_large_columns(monkeypatch):
    # In process (no worker spawn): every cell, the matmul rate included, runs run_cell directly.
    monkeypatch.setattr(attention, "spawn_worker", lambda module, spec, timeout: attention.run_cell(**spec))
    monkeypatch.setattr(attention, "LARGE_N", 512)
    out = attention.run(ns=(128,), patterns=("band",), methods=("graphattn", "blocked"), H=1, D=8, repeats=1,
                        log=lambda *a: None, floor=True, large=True)
    header, *table = out.splitlines()
    assert header.startswith("matmul rate ") and "GFLOP/s" in header
    assert "| x floor | x linear |" in table[0]
    large = [row for row in table if "| 512 " in row and "graphattn" in row]
    assert len(large) == 2
    blocked_large = [row for row in table if "| 512 " in row and "blocked" in row]
    assert all("graphattn only" in row for row in blocked_large)
    floor = float(large[0].split("|")[9])
    assert floor > 1.0  # no engine runs faster than the GEMM rate on its edges' FLOPs


@pytest.mark.parametrize("n,method", [(1 << 20, "blocked"), (1 << 20, "flex")])
def test_large_sizes_are_graphattn_only(n, method):
    assert attention.applicable(method, "band", n, 4, 64) == f"n = {n:,}: graphattn only"
