"""The fused Triton kernels (graphattn.nn.triton) under the Triton interpreter on CPU,
and compiled on CUDA when a GPU is present.

Triton fixes interpreter or compiled mode when it is first imported, so the cases
(``triton_cases.py``: float64 dense reference, forward and gradients, band / BigBird / random /
bipartite / biased / keyless / per-head graphs, tilings, bf16 / fp16, dropout, dispatch through
graph_attention and the layer, errors) run in one subprocess per device (``TRITON_INTERPRET=1``
for CPU); each case is reported here as its own test. Nothing in this process sees the variable.
Skipped when triton is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.nn.triton_cases import CASES

from graphattn.nn import triton as fused

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton): "
                                                         "the fused kernels are tested under its CPU interpreter")


def run_cases(device: str):
    """Run every case in one subprocess; returns ({case: result}, the CompletedProcess)."""
    env = dict(os.environ, GRAPHATTN_TRITON_DEVICE=device)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "tests.nn.triton_cases"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["case"]] = r
    return results, proc


@pytest.fixture(scope="session")
def interpreter_results():
    return run_cases("cpu")


@pytest.fixture(scope="session")
def cuda_results():
    return run_cases("cuda")


def check_case(results_and_proc, case):
    results, proc = results_and_proc
    if case not in results:
        pytest.fail(f"the subprocess did not report {case} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    r = results[case]
    assert r["ok"], r["error"]


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_case(interpreter_results, case):
    check_case(interpreter_results, case)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the compiled kernels are checked on a GPU")
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_case_on_cuda(cuda_results, case):
    check_case(cuda_results, case)


def test_import_without_kernels_and_reasons():
    # Importing the module never loads triton's kernels; the CPU reason says how to get them.
    assert isinstance(fused.triton_available(), bool)
    if not fused.triton_available():
        assert "pip install triton" in fused.triton_unavailable_reason()
    elif not fused.interpreted():
        why = fused.unavailable_reason("cpu", torch.float32)
        assert "TRITON_INTERPRET=1" in why
    why = fused.unavailable_reason("cpu", torch.float64)
    assert why is not None
    if fused.triton_available():
        assert "plan tile <= 128, got 256" in fused.unavailable_reason("cuda", torch.float16, tile=256)
        assert "head dims <= 256" in fused.unavailable_reason("cuda", torch.float16, head_dims=(64, 512))
        assert fused.unavailable_reason("cuda", torch.bfloat16, tile=64, head_dims=(64, 64)) is None

