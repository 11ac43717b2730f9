"""Which implementation runs :func:`graphattn.nn.graph_attention` (and every layer built on it).

Backends:

- ``Backend.TORCH``: the torch engine (:mod:`graphattn.nn._engine`): any device and dtype
  (half precision computed in fp32), dropout, float64.
- ``Backend.TRITON``: the fused Triton kernels (:mod:`graphattn.nn.triton_kernels`): CUDA
  tensors (CPU only under the Triton interpreter, for tests); fp32 / bf16 / fp16 inputs with
  fp32 accumulation, bias, per-head layouts, bipartite graphs, dropout.
- ``Backend.FLEX``: torch's FlexAttention with a BlockMask built from the plan
  (:mod:`graphattn.nn.flex`): exact, no dropout, no CPU backward.
- ``Backend.AUTO`` (the default): TRITON on CUDA tensors when it can run the call, otherwise
  TORCH; when a CUDA call falls back to TORCH a warning says why, once per reason. AUTO never
  picks FLEX: where FlexAttention is faster than the kernels is for the GPU benchmark
  (``python -m graphattn.bench gpu``) to show; force it with ``use(Backend.FLEX)``.

Force a backend with the context manager (per thread / asyncio task, nestable); a forced
backend that cannot run the call raises a ``RuntimeError`` that says why, never a silent
fallback:

>>> import torch
>>> from graphattn import rules
>>> from graphattn.nn import graph_attention
>>> from graphattn.nn.backends import Backend, use
>>> q = k = v = torch.randn(6, 1, 4)
>>> with use(Backend.TORCH):
...     graph_attention(q, k, v, rules.band(6, radius=1)).shape
torch.Size([6, 1, 4])
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import warnings

import torch

__all__ = ["Backend", "use", "current", "unavailable_reason", "select", "run"]


class Backend(enum.Enum):
    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"
    FLEX = "flex"


_CURRENT: contextvars.ContextVar[Backend] = contextvars.ContextVar("graphattn_backend", default=Backend.AUTO)
_warned: set[str] = set()


@contextlib.contextmanager
def use(backend: Backend):
    """Run the enclosed graph attention calls with ``backend`` (``Backend.AUTO`` restores the
    automatic choice)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected backend to be a graphattn.nn.backends.Backend, got "
                        f"{type(backend).__name__} {backend!r}")
    token = _CURRENT.set(backend)
    try:
        yield backend
    finally:
        _CURRENT.reset(token)


def current() -> Backend:
    """The backend set by the innermost :func:`use` (``Backend.AUTO`` outside any)."""
    return _CURRENT.get()


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def unavailable_reason(backend: Backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, plan,
                       bias=None, dropout_p: float = 0.0) -> str | None:
    """Why ``backend`` cannot run this call, or None when it can."""
    if backend in (Backend.TORCH, Backend.AUTO):
        return None
    if backend is Backend.TRITON:
        from graphattn.nn import triton_kernels

        return triton_kernels.unavailable_reason(q.device, q.dtype, tile=plan.tile if plan.dense else None,
                                                 head_dims=(q.shape[-1], v.shape[-1]))
    from graphattn.nn import flex

    return flex.unavailable_reason(q, plan=plan, bias=bias, dropout_p=dropout_p,
                                   needs_grad=_needs_grad(q, k, v, bias))


def select(q, k, v, *, plan, bias=None, dropout_p: float = 0.0) -> Backend:
    """The backend that runs this call: the forced one (or a RuntimeError saying why it cannot
    run), else the automatic choice."""
    backend = current()
    if backend is Backend.AUTO:
        if q.device.type != "cuda":
            return Backend.TORCH
        why = unavailable_reason(Backend.TRITON, q, k, v, plan=plan, bias=bias, dropout_p=dropout_p)
        if why is None:
            return Backend.TRITON
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"graphattn: CUDA tensors run on the torch engine because the Triton backend "
                          f"cannot: {why}", RuntimeWarning, stacklevel=3)
        return Backend.TORCH
    why = unavailable_reason(backend, q, k, v, plan=plan, bias=bias, dropout_p=dropout_p)
    if why is not None:
        raise RuntimeError(f"graphattn backend {backend.name} was requested but cannot run: {why}")
    return backend


def run(backend: Backend, q, k, v, bias, plan, scale: float, dropout_p: float, drop_key: int):
    """``(out [Nq, H, Dv] in q's dtype, lse [Nq, H] float32)`` through a fused backend."""
    if backend is Backend.TRITON:
        from graphattn.nn.triton_kernels import fused_attention

        return fused_attention(q, k, v, plan, bias=bias, scale=scale, dropout_p=dropout_p, drop_key=drop_key)
    if backend is Backend.FLEX:
        from graphattn.nn.flex import flex_graph_attention

        return flex_graph_attention(q, k, v, plan, bias=bias, scale=scale)
    raise ValueError(f"expected Backend.TRITON or Backend.FLEX, got {backend}")
