"""Compile the fused Triton kernels for a CUDA GPU on a machine that has none.

Triton ships its whole NVIDIA tool chain (the LLVM NVPTX back end, ``ptxas``, ``cuobjdump``),
so a kernel compiles to a ``cubin`` for any compute capability without a driver or a device.
:func:`compile_only` makes every kernel launch inside it compile for the target instead of
running: the launchers of :mod:`graphattn.nn.triton` run unchanged on CPU tensors
(same argument types, alignments and constants as on the GPU), each distinct specialisation is
compiled once, and its resource usage is read off the cubin. The interpreter tests check what
the kernels compute; this checks what the interpreter cannot: that every variant compiles for
the GPU, how many registers and how much shared memory it takes, whether it spills, and
whether its matmuls reach the tensor cores (``wgmma`` on sm_90, ``mma`` before).

Inside the context the kernels' outputs are left unwritten (the launches never run), so the
numbers the launchers return are garbage; only the compilations are the result.

>>> import graphattn.nn.triton.aot as aot
>>> aot.H100.arch, aot.H100.max_shared_bytes
(90, 232448)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
import time

__all__ = ["Target", "H100", "A100", "KernelBuild", "compile_only", "unavailable_reason"]


@dataclasses.dataclass(frozen=True)
class Target:
    """A CUDA compile target: compute capability ``arch`` (90 for H100/H200) and the per-block
    limits a launch must fit (opt-in shared memory, registers per block)."""

    arch: int
    max_shared_bytes: int
    registers_per_block: int = 65536
    warp_size: int = 32


H100 = Target(arch=90, max_shared_bytes=232448)  # also the H200: same SM (sm_90)
A100 = Target(arch=80, max_shared_bytes=166912)


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    """One compiled specialisation of a kernel.

    ``constants``: the compile-time arguments (block sizes, flags, ``num_warps``) and the
    operand dtype; ``registers`` per thread; ``spill_bytes``: local memory per thread (register
    spills); ``shared_bytes``: the shared memory a launch needs; ``tensor_core``: the matmul
    instruction family in the PTX (``"wgmma"``, ``"mma"`` or ``"none"``); ``fits``: whether a
    block of ``num_warps`` warps fits the target's shared memory and register file."""

    kernel: str
    constants: dict
    seconds: float
    registers: int
    spill_bytes: int
    shared_bytes: int
    num_warps: int
    tensor_core: str
    fits: bool


def unavailable_reason(target: Target = H100) -> str | None:
    """Why kernels cannot be compiled for ``target`` here, or None when they can."""
    from graphattn.nn.triton import runtime

    why = runtime.triton_unavailable_reason()
    if why:
        return why
    if runtime.interpreted():
        return ("triton runs in interpreter mode in this process (TRITON_INTERPRET=1): compiling needs "
                "triton imported without it")
    from triton.backends import backends

    if "nvidia" not in backends:
        return f"this triton has no NVIDIA back end (back ends: {sorted(backends)})"
    try:
        import triton.knobs

        for tool in ("ptxas", "cuobjdump"):
            getattr(triton.knobs.nvidia, tool).path
    except Exception as exc:  # RuntimeError("Cannot find ptxas") and the like
        return f"triton's NVIDIA tools are missing ({exc})"
    return None


class _CompileDriver:
    """The part of a Triton driver a launch asks before it compiles: target, device, stream."""

    def __init__(self, target: Target):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", target.arch, target.warp_size)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _resources(kernel, target: Target, name: str, constants: dict, seconds: float) -> KernelBuild:
    import triton.knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        proc = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", path],
                              capture_output=True, text=True, check=True)
    usage = dict(re.findall(r"(REG|LOCAL|STACK):(\d+)", proc.stdout))
    ptx = kernel.asm["ptx"]
    core = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "none")
    warps = int(kernel.metadata.num_warps)
    shared = int(kernel.metadata.shared)
    regs = int(usage.get("REG", 0))
    fits = shared <= target.max_shared_bytes and regs * warps * target.warp_size <= target.registers_per_block
    return KernelBuild(kernel=name, constants=constants, seconds=seconds, registers=regs,
                       spill_bytes=int(usage.get("LOCAL", 0)) + int(usage.get("STACK", 0)),
                       shared_bytes=shared, num_warps=warps, tensor_core=core, fits=fits)


@contextlib.contextmanager
def compile_only(target: Target = H100):
    """Within the context, every Triton kernel launch compiles for ``target`` and returns
    without running; yields the list of :class:`KernelBuild` (one per distinct
    specialisation, in launch order), filled as the launches happen.

    Process-global (it swaps Triton's active driver): use it from one thread, and not while
    kernels run on a real GPU in the same process. Raises ``RuntimeError`` saying why when
    compiling is not possible here (see :func:`unavailable_reason`).
    """
    if not isinstance(target, Target):
        raise TypeError(f"expected target to be a graphattn.nn.triton.aot.Target, got {type(target).__name__}")
    why = unavailable_reason(target)
    if why:
        raise RuntimeError(f"cannot compile the Triton kernels for sm_{target.arch}: {why}")
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    builds: list[KernelBuild] = []
    seen: set[int] = set()
    touched: list = []
    run = JITFunction.run

    def compile_launch(self, *args, grid, warmup, **kwargs):
        t0 = time.perf_counter()
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        seconds = time.perf_counter() - t0
        touched.append(self)
        if id(kernel) not in seen:
            seen.add(id(kernel))
            constants = {k: v for k, v in kwargs.items() if k.isupper()}
            constants["num_warps"] = kwargs.get("num_warps")
            dtypes = [str(a.dtype).replace("torch.", "") for a in args[:1] if hasattr(a, "dtype")]
            if dtypes:
                constants["dtype"] = dtypes[0]
            builds.append(_resources(kernel, target, self.fn.__name__, constants, seconds))
        return kernel

    saved = driver._active
    driver.set_active(_CompileDriver(target))
    JITFunction.run = compile_launch
    try:
        yield builds
    finally:
        JITFunction.run = run
        driver._active = saved  # set directly: reset_active() would probe for a real driver
        # The kernels compiled here sit in the functions' per-device caches under device 0;
        # drop them so a real GPU in this process compiles for its own architecture.
        for fn in {id(f): f for f in touched}.values():
            fn.device_caches.clear()
