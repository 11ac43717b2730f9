"""The compile report (``python -m graphattn.bench gpu-compile``): its cases mirror the GPU
benchmark's launches, and the whole report runs here, without a GPU (slow: ~70 compilations)."""

import pytest
import torch

from graphattn.bench import gpu, gpu_compile
from graphattn.bench.cases import exact_cases
from graphattn.bench.__main__ import main
from graphattn.nn.triton import aot as triton_aot

WHY = triton_aot.unavailable_reason()


def test_cases_cover_the_gpu_benchmark():
    cases = gpu_compile.cases(n=512)
    names = {c[0] for c in cases}
    assert set(exact_cases(512)) <= names  # every exactness graph ...
    assert {c[6] for c in cases if c[0] in exact_cases(512)} == {torch.float32, torch.bfloat16}  # ... both dtypes
    timed = {(c[0], c[9]) for c in cases if c[0].startswith("bench")}
    assert timed == {("bench band", 64), ("bench band", 128), ("bench bigbird", 64), ("bench bigbird", 128),
                     ("bench random", 64)}
    assert all(c[4:6] == (gpu.H, gpu.D) and c[6] == torch.bfloat16 for c in cases if c[0].startswith("bench"))
    assert any(c[6] == torch.float16 and c[8] > 0 for c in cases)  # fp16 with dropout


def test_table_flags():
    b = triton_aot.KernelBuild(kernel="_dense_bwd_dkdv", seconds=0.5, registers=80, spill_bytes=0,
                               shared_bytes=2048, num_warps=16, tensor_core="none", fits=True,
                               constants=dict(dtype="float32", BLOCK_T=64, BLOCK_D=64, BLOCK_DV=32, HAS_BIAS=True,
                                              KEYS_FIRST=True, WANT_DK=False, WANT_DV=True, PARTIAL=False))
    row = gpu_compile.build_table([b]).splitlines()[2]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells == ["_dense_bwd_dkdv", "float32", "64", "64/32", "has_bias,keys_first,dV only", "16", "80", "0",
                     "2", "none", "yes", "0.5"]


@pytest.mark.slow
@pytest.mark.skipif(WHY is not None, reason=f"cannot compile for sm_90 here: {WHY}")
def test_report_end_to_end(capsys):
    assert main(["gpu-compile", "--n", "1024"]) == 0
    out = capsys.readouterr().out
    summary = out.splitlines()[1]
    assert "kernel specialisations compiled for sm_90" in summary and "0 do not fit the SM" in summary
    assert out.count("| _dense_fwd") >= 4 and "wgmma" in out


@pytest.mark.slow
@pytest.mark.skipif(WHY is not None, reason=f"cannot compile for sm_90 here: {WHY}")
def test_sweep_reproduces_the_launch_table_for_64_tiles():
    from graphattn.nn.triton import launch

    chosen = gpu_compile.sweep(tiles=(64,), dims=(64,))
    assert set(chosen) == {(fp32, 64, 64, bias) for fp32 in (False, True) for bias in (False, True)}
    for cls, pick in chosen.items():
        assert {k: v[:2] for k, v in pick.items()} == launch.DENSE_LAUNCH[cls], cls
        assert all(v[2] == 0 for v in pick.values())  # no spills
    assert "| bf16/fp16 | 64   | 64" in gpu_compile.sweep_table(chosen)


def test_refuses_clearly_when_it_cannot_compile(monkeypatch, capsys):
    monkeypatch.setattr(triton_aot, "unavailable_reason", lambda target=None: "triton is not importable (test)")
    assert main(["gpu-compile"]) == 2
    assert "gpu-compile: triton is not importable (test)" in capsys.readouterr().err
