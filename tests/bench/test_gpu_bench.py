"""The GPU benchmark script (graphattn.bench.gpu) without a GPU: it refuses clearly, its
tables and target checks read the measurements right, and a tiny CPU dry run goes through every
method, reporting what cannot run instead of stopping."""

import pytest
import torch

from graphattn.bench import gpu
from graphattn.bench.__main__ import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_refuses_without_cuda(capsys, tmp_path):
    out = tmp_path / "r.md"
    assert main(["gpu", "--out", str(out)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()


def cell(pattern, n, method, mode, t=None, skip=None, peak=1.0):
    r = dict(pattern=pattern, n=n, E=10 * n, method=method, mode=mode)
    if t is None:
        r["skip"] = skip
    else:
        r.update(time_s=t, peak_gib=peak, first_s=0.5, tflops=1.0, floor_x=2.0)
    return r


def test_timing_table_reads_the_cells():
    results = [cell("band", 65536, "graphattn", "fwd", 1.4), cell("band", 65536, "flex", "fwd", 1.0),
               cell("band", 1048576, "graphattn", "fwd+bwd", skip="OOM")]
    table = gpu.timing_table(results)
    assert table.count("\n") == len(results) + 1 and "OOM" in table
    assert "native band mask" in table and "| 1400.00 |" in table


def test_methods_come_from_the_peer_registry():
    from graphattn.bench import attention, peers

    assert gpu.METHODS[2:] == peers.names("cuda") and attention.METHODS[1:] == peers.names("cpu")
    assert not hasattr(gpu, "PEAK_TFLOPS") and not hasattr(gpu, "targets")  # the report measures only


def test_priority_order_starts_at_64k_then_1m_band():
    cells = gpu._cells()
    assert cells[:4] == [("band", 65536), ("bigbird", 65536), ("random", 65536), ("band", 1048576)]
    assert len(cells) == len(set(cells)) == len(gpu.BAND_N) + 2 * len(gpu.OTHER_N)


def test_cpu_dry_run_reports_every_method():
    results = gpu.timings("cpu", cells=[("random", 128)], repeats=1, log=lambda *a: None)
    by = {(r["method"], r["mode"]): r for r in results}
    assert len(by) == 10 and "band and BigBird only" in by[("graphattn_t128", "fwd")]["skip"]
    # Without a GPU (and outside the interpreter) the Triton backend says why it cannot run ...
    from graphattn.nn import triton as fused

    if fused.unavailable_reason("cpu", torch.bfloat16) is not None:
        assert "backend TRITON was requested but cannot run" in by[("graphattn", "fwd")]["skip"]
    # ... while the peers run.
    assert by[("dense_sdpa", "fwd")]["time_s"] > 0 and by[("gather_scatter", "fwd+bwd")]["time_s"] > 0
    # FlexAttention runs only the band on a CPU (the registry says so): the cell says why.
    assert all("does not run random on cpu" in by[("flex", m)]["skip"] for m in ("fwd", "fwd+bwd"))


def test_launch_sweep_dry_run_reports_each_candidate():
    from graphattn.bench.gpu_compile import SWEEP_CANDIDATES

    results = gpu.launch_sweep("cpu", n=256, patterns=("band",), repeats=1, log=lambda *a: None)
    assert len(results) == 2 * (1 + len(SWEEP_CANDIDATES))
    assert results[0]["launch"] == "table" and results[2]["launch"] == "4 warps, 1 stages"
    from graphattn.nn import triton as fused
    from graphattn.nn.triton import launch

    assert launch.LAUNCH_OVERRIDE is None  # restored
    if fused.unavailable_reason("cpu", torch.bfloat16) is not None:  # no interpreter here
        assert all("backend TRITON was requested but cannot run" in r["skip"] for r in results)
    table = gpu.launch_table(results + [dict(pattern="band", n=256, launch="table", mode="fwd", time_s=0.002),
                                        dict(pattern="band", n=256, launch="4 warps, 1 stages", mode="fwd",
                                             time_s=0.001)])
    assert "| 2.00 " in table and "| 1.00 " in table


def test_whole_report_dry_run_on_cpu(tmp_path):
    # Every section is assembled and written even when nothing can run on the Triton backend.
    out = tmp_path / "gpu_bench.md"
    report = gpu.run(str(out), budget_s=600, device="cpu", max_n=256, exact_n=256, log=lambda *a: None)
    assert out.read_text().strip() == report.strip()
    for section in ("## Exactness", "## Timings", "## Launch sweep"):
        assert section in report
    assert "bf16 matmul rate measured in this run" in report and "Targets" not in report
    assert report.count("| band r=128") == 2  # fp32 and bf16 rows
