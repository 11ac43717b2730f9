"""Launch configuration of the kernels and the calls they decline (internal).

The launch table comes from the sm_90 compile sweep (``python -m graphattn.bench gpu-compile
--sweep``); :func:`unavailable_reason` says which calls the kernels cannot run.
"""

from __future__ import annotations

import os

import torch

from graphattn.nn.triton.runtime import interpreted, triton_unavailable_reason

__all__ = ["DTYPES", "MAX_TILE", "MAX_DIM", "DENSE_LAUNCH", "NO_FIT", "next_pow2", "dense_config", "dense_launch",
           "unavailable_reason"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_TILE, MAX_DIM = 128, 256


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def unavailable_reason(device, dtype, *, tile: int | None = None,
                       head_dims: tuple[int, int] | None = None) -> str | None:
    """Why the kernels cannot run on ``device`` with ``dtype`` inputs (a plan with dense tiles of
    size ``tile``, None when it has none; query / value head dims ``head_dims``), or None when
    they can."""
    why = triton_unavailable_reason()
    if why:
        return why
    device = torch.device(device)
    if dtype not in DTYPES:
        return f"the Triton kernels take float32, bfloat16 or float16, got {dtype} (use Backend.TORCH)"
    if tile is not None and tile > MAX_TILE:
        return f"the Triton kernels keep a tile's scores in registers: plan tile <= {MAX_TILE}, got {tile}"
    if head_dims is not None and max(head_dims) > MAX_DIM:
        return f"the Triton kernels take head dims <= {MAX_DIM}, got {head_dims[0]} and {head_dims[1]}"
    if tile is not None and head_dims is not None:
        cls = (dtype == torch.float32, max(16, next_pow2(tile)), max(64, next_pow2(max(head_dims))))
        if cls in NO_FIT:
            return (f"{NO_FIT[cls]} (tile {tile}, head dims {head_dims[0]} and {head_dims[1]}, {dtype}); "
                    f"use a plan tile <= 64{' or bf16' if dtype == torch.float32 else ''}")
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreted():
            return None
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return ("TRITON_INTERPRET=1 was set after triton was imported in compiled mode; set it before "
                    "triton's first import in the process")
        return ("CPU tensors run the Triton kernels only under the Triton interpreter (TRITON_INTERPRET=1 "
                "before triton is first imported)")
    return f"the Triton kernels run on CUDA devices (or on CPU under TRITON_INTERPRET=1), got {device}"


def dense_config(dtype: torch.dtype):
    """``(keys_first, dkdv_passes)`` of the dense dK/dV kernel.

    fp32 runs IEEE matmuls on the FMA units, whose operands are replicated across threads:
    keys-first (no register transposes) and two launches (one accumulator each) are what compile
    without spills (up to 10 KB per thread otherwise; ``python -m graphattn.bench gpu-compile``).
    bf16 / fp16 (tensor cores) keep the forward's orientation, which takes less shared memory
    than reading Q and dO twice."""
    if dtype == torch.float32:
        return True, ((True, False), (False, True))
    return False, ((True, True),)


# (num_warps, num_stages) of each dense kernel, chosen by the sm_90 compile sweep
# (``python -m graphattn.bench gpu-compile --sweep``: among the (warps, stages) that fit an SM,
# fewest spilled bytes, then most pipeline stages, then the conventional warp count). No GPU
# timing has chosen them yet. Key: (fp32, BLOCK_T, BLOCK_D class (64: head dims <= 64), bias).
# Swept for sm_90 (H100/H200, 227 KiB shared memory per block); an SM with less (A100: 163 KiB)
# may not fit the large head-dim classes: `gpu-compile --arch 80` shows which.
DENSE_LAUNCH: dict[tuple, dict[str, tuple[int, int]]] = {
    (False, 64, 64, False): {"fwd": (4, 3), "dq": (4, 3), "dkdv": (4, 3)},
    (False, 64, 64, True): {"fwd": (8, 3), "dq": (8, 3), "dkdv": (8, 3)},
    (False, 64, 128, False): {"fwd": (4, 3), "dq": (4, 3), "dkdv": (8, 3)},
    (False, 64, 128, True): {"fwd": (8, 3), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 64, 256, False): {"fwd": (8, 2), "dq": (4, 2), "dkdv": (8, 1)},
    (False, 64, 256, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 128, 64, False): {"fwd": (8, 3), "dq": (8, 3), "dkdv": (8, 1)},
    (False, 128, 64, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 128, 128, False): {"fwd": (8, 2), "dq": (8, 2), "dkdv": (8, 1)},
    (False, 128, 128, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (True, 64, 64, False): {"fwd": (16, 3), "dq": (16, 3), "dkdv": (16, 3)},
    (True, 64, 64, True): {"fwd": (16, 3), "dq": (16, 1), "dkdv": (16, 3)},
    (True, 64, 128, False): {"fwd": (8, 3), "dq": (16, 3), "dkdv": (16, 3)},
    (True, 64, 128, True): {"fwd": (16, 2), "dq": (16, 1), "dkdv": (16, 2)},
}
# Where the sweep found no launch of the backward that fits an SM (shared memory), or only
# ones that spill kilobytes per thread (fp32 128-tiles): the Triton backend declines these.
NO_FIT = {
    (False, 128, 256): "a 128-tile with head dims above 128 in bf16/fp16 needs more shared memory than an SM has",
    (True, 64, 256): "fp32 with head dims above 128 needs more shared memory than an SM has",
    (True, 128, 64): "fp32 with a 128-tile spills registers (kilobytes per thread)",
    (True, 128, 128): "fp32 with a 128-tile spills registers (kilobytes per thread)",
    (True, 128, 256): "fp32 with a 128-tile needs more shared memory than an SM has",
}
LAUNCH_OVERRIDE: tuple[int, int] | None = None  # the sweep's candidate, for every dense kernel


def dense_launch(kernel: str, block_t: int, block_d: int, dtype: torch.dtype, has_bias: bool) -> tuple[int, int]:
    """``(num_warps, num_stages)`` of dense kernel ``kernel`` ("fwd", "dq", "dkdv")."""
    if LAUNCH_OVERRIDE is not None:
        return LAUNCH_OVERRIDE
    fp32 = dtype == torch.float32
    entry = DENSE_LAUNCH.get((fp32, block_t, max(64, block_d), has_bias))
    if entry is not None:
        return entry[kernel]
    # Small tiles (16, 32) use little of an SM in any configuration.
    return (8 if fp32 else 4), 3
