"""graphattn.nn.triton.aot: the fused kernels compiled for sm_90 (H100/H200) on this CPU machine.

What the interpreter tests cannot see: that every variant compiles for the GPU, fits an SM,
does not spill registers in the benchmark's configurations, and that fp32 never reaches the
tensor cores (TF32) while bf16 does (wgmma).
"""

import pytest
import torch

from graphattn import rules
from graphattn.nn import triton as fused
from graphattn.nn.triton import aot as triton_aot, tables
from graphattn.nn.plan import build_plan

WHY = triton_aot.unavailable_reason()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"cannot compile for sm_90 here: {WHY}")


def compile_case(dtype, *, bias=False, dropout_p=0.0, heads=8, dim=64, tile=64, n=640):
    # Band (dense tiles) + random (sparse edges) + a global token (a long row and key, split
    # into segments at this work limit): every kernel family and the partial variants.
    g = rules.band(n, radius=128) | rules.random(n, num_random_keys=8, seed=0) | rules.global_tokens(n, global_indices=[3])
    plan = build_plan(g.edge_index, n, n, tile=tile)
    q, k, v = (torch.zeros(n, heads, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    b = torch.zeros(plan.num_edges, heads, requires_grad=True) if bias else None
    old = tables.MAX_TILES, tables.MAX_CHUNKS
    tables.MAX_TILES, tables.MAX_CHUNKS = 4, 2
    try:
        with triton_aot.compile_only() as builds:
            out, _ = fused.FusedGraphAttention.apply(q, k, v, b, plan, dim ** -0.5, dropout_p, 11)
            out.backward(torch.zeros_like(out))
    finally:
        tables.MAX_TILES, tables.MAX_CHUNKS = old
    return builds


def by_kernel(builds):
    names = {}
    for b in builds:
        names.setdefault(b.kernel, []).append(b)
    return names


def test_bf16_benchmark_configuration_compiles_without_spills():
    builds = compile_case(torch.bfloat16)
    kernels = by_kernel(builds)
    assert set(kernels) == {"_dense_fwd", "_csr_fwd", "_dense_bwd_dq", "_dense_bwd_dkdv", "_csr_bwd_dq",
                            "_csr_bwd_dkdv"}
    assert any(b.constants["PARTIAL"] for b in builds)  # the split long rows compiled too
    for b in builds:
        assert b.fits and b.spill_bytes == 0, b
        assert b.constants["dtype"] == "bfloat16"
        assert b.tensor_core == ("wgmma" if b.kernel.startswith("_dense") else "none"), b
        assert b.registers > 0


def test_fp32_never_uses_tensor_cores_and_does_not_spill_in_the_dense_kernels():
    builds = compile_case(torch.float32)
    for b in builds:
        assert b.tensor_core == "none", b  # IEEE fp32 matmuls: no TF32
        assert b.fits, b
        if b.kernel in ("_dense_fwd", "_dense_bwd_dkdv") or (b.kernel == "_dense_bwd_dq" and not b.constants["PARTIAL"]):
            assert b.spill_bytes == 0, b
    dkdv = [b for b in builds if b.kernel == "_dense_bwd_dkdv"]
    # dK and dV in two launches, keys-first (graphattn.nn.triton.launch.dense_config)
    assert {(b.constants["WANT_DK"], b.constants["WANT_DV"]) for b in dkdv} == {(True, False), (False, True)}
    assert all(b.constants["KEYS_FIRST"] for b in dkdv)


def test_half_precision_with_bias_and_dropout_compiles():
    builds = compile_case(torch.float16, bias=True, dropout_p=0.1, heads=2, dim=24, tile=32)
    assert {b.constants["BLOCK_D"] for b in builds} == {32}
    assert all(b.constants["DROPOUT"] and b.constants["HAS_BIAS"] for b in builds)
    assert any(b.constants.get("WANT_DBIAS") for b in builds)
    for b in builds:
        assert b.fits, b
        if b.kernel.startswith("_dense"):
            assert b.tensor_core in ("wgmma", "mma"), b


def test_compile_only_restores_triton_state():
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    run, active = JITFunction.run, driver._active
    with triton_aot.compile_only():
        assert JITFunction.run is not run
        assert driver._active.get_current_target().arch == 90
    assert JITFunction.run is run and driver._active is active
    with pytest.raises(ZeroDivisionError), triton_aot.compile_only():
        1 / 0
    assert JITFunction.run is run and driver._active is active


def test_target_type_error():
    with pytest.raises(TypeError, match="expected target to be a graphattn.nn.triton.aot.Target, got int"):
        with triton_aot.compile_only(90):
            pass


@pytest.mark.parametrize("dtype, tile, dim", [(torch.bfloat16, 64, 256), (torch.bfloat16, 128, 128),
                                              (torch.float32, 64, 128), (torch.float32, 16, 64),
                                              (torch.bfloat16, 32, 128)])
def test_every_supported_class_fits_an_sm(dtype, tile, dim):
    # The launch table (graphattn.nn.triton.launch.DENSE_LAUNCH, from `gpu-compile --sweep`) at its edges:
    # the largest head dims and tiles the backend accepts, and the small tiles' default launch.
    assert fused.unavailable_reason("cuda", dtype, tile=tile, head_dims=(dim, dim)) is None
    builds = compile_case(dtype, heads=2, dim=dim, tile=tile, n=4 * tile)
    assert {b.kernel for b in builds} >= {"_dense_fwd", "_dense_bwd_dq", "_dense_bwd_dkdv"}
    for b in builds:
        assert b.fits, b


@pytest.mark.parametrize("dtype, tile, dim, text", [
    (torch.bfloat16, 128, 256, "a 128-tile with head dims above 128 in bf16/fp16"),
    (torch.float32, 64, 256, "fp32 with head dims above 128"),
    (torch.float32, 128, 64, "fp32 with a 128-tile spills registers"),
])
def test_classes_without_a_fitting_launch_are_declined(dtype, tile, dim, text):
    why = fused.unavailable_reason("cuda", dtype, tile=tile, head_dims=(dim, dim))
    assert why is not None and text in why and "use a plan tile <= 64" in why
    # ... but not when the plan has no dense tiles (only the CSR kernels run)
    assert fused.unavailable_reason("cuda", dtype, tile=None, head_dims=(dim, dim)) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_csr_kernels_with_large_chunks_do_not_spill(dtype):
    n = 512
    g = rules.random(n, num_random_keys=64, seed=0)  # chunks of 64 neighbours
    plan = build_plan(g.edge_index, n, n, tile=64)
    q, k, v = (torch.zeros(n, 2, 256, dtype=dtype, requires_grad=True) for _ in range(3))
    with triton_aot.compile_only() as builds:
        out, _ = fused.FusedGraphAttention.apply(q, k, v, None, plan, 0.0625, 0.0, 0)
        out.backward(torch.zeros_like(out))
    assert {b.kernel for b in builds} == {"_csr_fwd", "_csr_bwd_dq", "_csr_bwd_dkdv"}
    for b in builds:
        assert b.fits and b.spill_bytes == 0 and b.constants["BLOCK_N"] == 64, b
