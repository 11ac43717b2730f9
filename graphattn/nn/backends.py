"""Which implementation runs :func:`graphattn.nn.graph_attention` (and every layer built on it).

A *backend* is one object registered under a name. It implements the :class:`AttentionBackend`
interface:

- ``unavailable_reason(q, k, v, *, plan, bias, dropout_p, needs_grad, score_bound) -> str | None``:
  why it cannot run this call exactly (device, dtype, the plan's tile, head dims, dropout, a
  missing backward, scores beyond the range its arithmetic keeps exact), or None when it can. A
  backend never runs a call it declines. ``score_bound`` bounds every score of the call
  (:func:`graphattn.nn._engine.score_bound`: ``scale * max|q| * max|k| + max|bias|``).
- ``attention(q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound) -> (out, lse)``: the forward
  over a :class:`~graphattn.nn.plan.TilingPlan`: ``out [Nq, H, Dv]`` and ``lse [Nq, H]`` (the
  natural-log log-sum-exp of each query's scores, ``-inf`` for a query without keys, whose
  output is zero), both differentiable with respect to ``q``, ``k``, ``v`` and ``bias``: the
  backward takes the gradients of both. Dropout replays the torch engine's keep-mask: a
  counter-based hash (:func:`graphattn._random.hash_uniform`) of ``drop_key``, the edge and the
  head, so every backend drops the same probabilities.
- ``auto_devices``: the device types on which ``AUTO`` tries it (in registration order).

Built-in backends:

- ``Backend.TORCH`` (``"torch"``): the torch engine (:mod:`graphattn.nn._engine`): any device
  and dtype (half precision computed in fp32), dropout, float64.
- ``Backend.TRITON`` (``"triton"``): the fused Triton kernels (:mod:`graphattn.nn.triton`):
  CUDA tensors (CPU only under the Triton interpreter, for tests); fp32 / bf16 / fp16 inputs
  with fp32 accumulation, bias, per-head layouts, bipartite graphs, dropout.
- ``Backend.FLEX`` (``"flex"``): torch's FlexAttention with a BlockMask built from the plan
  (:mod:`graphattn.nn.flex`): exact, no dropout, no CPU backward.
- ``Backend.AUTO`` (the default): the first registered backend whose ``auto_devices`` holds the
  tensors' device type and that can run the call, otherwise TORCH; when a CUDA call falls back
  to TORCH a warning says why, once per reason. AUTO never picks FLEX: where FlexAttention is
  faster than the kernels is for the GPU benchmark (``python -m graphattn.bench gpu``) to show.

A new backend (a CUDA or C++ CPU kernel) is one module implementing the interface and one call
``register("name", MyBackend())``; ``use("name")`` then forces it. Force a backend with the
context manager (per thread / asyncio task, nestable); a forced backend that cannot run the call
raises a ``RuntimeError`` that says why, never a silent fallback:

>>> import torch
>>> from graphattn import rules
>>> from graphattn.nn import graph_attention
>>> from graphattn.nn.backends import Backend, use
>>> q = k = v = torch.randn(6, 1, 4)
>>> with use(Backend.TORCH):
...     graph_attention(q, k, v, rules.band(6, radius=1)).shape
torch.Size([6, 1, 4])
>>> sorted(registered())
['flex', 'torch', 'triton']
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import warnings
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Backend", "AttentionBackend", "register", "registered", "get", "use", "current",
           "unavailable_reason", "select", "run"]


class Backend(str, enum.Enum):
    """Names of the built-in backends (a registered backend's name is any other string)."""

    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"
    FLEX = "flex"


@runtime_checkable
class AttentionBackend(Protocol):
    """What a backend implements (see the module docstring)."""

    auto_devices: tuple[str, ...]

    def unavailable_reason(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, plan,
                           bias: torch.Tensor | None, dropout_p: float, needs_grad: bool,
                           score_bound: float) -> str | None:
        ...

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, plan,
                  scale: float, dropout_p: float, drop_key: int, score_bound: float) -> tuple[torch.Tensor, torch.Tensor]:
        ...


_REGISTRY: dict[str, AttentionBackend] = {}


def register(name: str, backend: AttentionBackend, *, replace: bool = False) -> None:
    """Register ``backend`` under ``name`` (``replace=True`` to swap an existing one)."""
    if not isinstance(name, str) or not name or name == Backend.AUTO.value:
        raise ValueError(f"expected name to be a non-empty string other than 'auto', got {name!r}")
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"expected backend to implement AttentionBackend (auto_devices, unavailable_reason, "
                        f"attention), got {type(backend).__name__}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a backend named {name!r} is registered already (pass replace=True to swap it)")
    _REGISTRY[_name(name)] = backend


def registered() -> dict[str, AttentionBackend]:
    """The registered backends by name, in registration order."""
    return dict(_REGISTRY)


def _name(backend) -> str:
    if isinstance(backend, Backend):
        return backend.value
    if isinstance(backend, str):
        return backend
    raise TypeError(f"expected backend to be a graphattn.nn.backends.Backend or a registered backend's name, "
                    f"got {type(backend).__name__} {backend!r}")


def _canonical(backend):
    """A built-in name as its Backend member, any other name as the string."""
    name = _name(backend)
    try:
        return Backend(name)
    except ValueError:
        return name


def get(backend) -> AttentionBackend:
    """The backend registered under ``backend`` (a Backend member or a name)."""
    name = _name(backend)
    if name not in _REGISTRY:
        raise ValueError(f"expected a registered backend ({', '.join(_REGISTRY)}) or 'auto', got {name!r}")
    return _REGISTRY[name]


_CURRENT: contextvars.ContextVar = contextvars.ContextVar("graphattn_backend", default=Backend.AUTO)
_warned: set[str] = set()


@contextlib.contextmanager
def use(backend):
    """Run the enclosed graph attention calls with ``backend`` (a :class:`Backend` or a
    registered name; ``Backend.AUTO`` restores the automatic choice)."""
    backend = _canonical(backend)
    if backend is not Backend.AUTO:
        get(backend)
    token = _CURRENT.set(backend)
    try:
        yield backend
    finally:
        _CURRENT.reset(token)


def current():
    """The backend set by the innermost :func:`use` (``Backend.AUTO`` outside any)."""
    return _CURRENT.get()


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _bound(q, k, bias, scale, score_bound):
    if score_bound is not None:
        return score_bound
    from graphattn.nn._engine import score_bound as bound

    return bound(q, k, q.shape[-1] ** -0.5 if scale is None else scale, bias)


def unavailable_reason(backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, plan,
                       bias=None, dropout_p: float = 0.0, scale: float | None = None,
                       score_bound: float | None = None) -> str | None:
    """Why ``backend`` cannot run this call, or None when it can."""
    if _canonical(backend) is Backend.AUTO:
        return None
    return get(backend).unavailable_reason(q, k, v, plan=plan, bias=bias, dropout_p=dropout_p,
                                           needs_grad=_needs_grad(q, k, v, bias),
                                           score_bound=_bound(q, k, bias, scale, score_bound))


def select(q, k, v, *, plan, bias=None, dropout_p: float = 0.0, scale: float | None = None,
           score_bound: float | None = None):
    """The backend that runs this call: the forced one (or a RuntimeError saying why it cannot
    run), else the automatic choice."""
    score_bound = _bound(q, k, bias, scale, score_bound)
    backend = current()
    if backend is Backend.AUTO:
        device = q.device.type
        for name, impl in _REGISTRY.items():
            if name == Backend.TORCH.value or device not in impl.auto_devices:
                continue
            why = unavailable_reason(name, q, k, v, plan=plan, bias=bias, dropout_p=dropout_p,
                                     score_bound=score_bound)
            if why is None:
                return _canonical(name)
            if device == "cuda" and why not in _warned:
                _warned.add(why)
                warnings.warn(f"graphattn: CUDA tensors run on the torch engine because the {name} backend "
                              f"cannot: {why}", RuntimeWarning, stacklevel=3)
        return Backend.TORCH
    why = unavailable_reason(backend, q, k, v, plan=plan, bias=bias, dropout_p=dropout_p, score_bound=score_bound)
    if why is not None:
        label = backend.name if isinstance(backend, Backend) else repr(backend)
        raise RuntimeError(f"graphattn backend {label} was requested but cannot run: {why}")
    return backend


def run(backend, q, k, v, bias, plan, scale: float, dropout_p: float, drop_key: int,
        score_bound: float | None = None):
    """``(out [Nq, H, Dv], lse [Nq, H])`` of ``backend``, differentiable through both."""
    return get(backend).attention(q, k, v, bias, plan, scale, dropout_p, drop_key,
                                  _bound(q, k, bias, scale, score_bound))


# ---------------------------------------------------------------------------------------------
# The built-in backends. Each imports its implementation on first use, so triton stays optional.


# Score bounds up to which a backend that computes float32 scores stays exact: 1e-4 relative for
# float32 inputs (graphattn.nn._engine.FP32_MAX_LOGIT), the half dtypes' own tolerance for bf16 /
# fp16 inputs (probabilities rounded to the input dtype already carry 4e-3).
_FP32_SCORE_LIMITS = {torch.float32: 1024.0, torch.bfloat16: 16384.0, torch.float16: 16384.0}


def fp32_score_reason(q: torch.Tensor, score_bound: float) -> str | None:
    """Why a backend with float32 scores cannot run a call whose scores reach ``score_bound``."""
    limit = _FP32_SCORE_LIMITS.get(q.dtype)
    if limit is not None and not score_bound <= limit:
        return (f"scores up to {score_bound:.3g} exceed the {limit:g} within which float32 scores are exact "
                f"for {q.dtype} inputs (the torch engine computes them in float64)")
    return None


class _TorchBackend:
    auto_devices: tuple[str, ...] = ()

    def unavailable_reason(self, q, k, v, *, plan, bias, dropout_p, needs_grad, score_bound):
        return None

    def attention(self, q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound):
        from graphattn.nn._engine import engine_attention

        return engine_attention(q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound)


class _TritonBackend:
    auto_devices = ("cuda",)

    def unavailable_reason(self, q, k, v, *, plan, bias, dropout_p, needs_grad, score_bound):
        from graphattn.nn import triton

        return (triton.unavailable_reason(q.device, q.dtype, tile=plan.tile if plan.dense else None,
                                          head_dims=(q.shape[-1], v.shape[-1]))
                or fp32_score_reason(q, score_bound))

    def attention(self, q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound):
        from graphattn.nn.triton import fused_attention

        return fused_attention(q, k, v, plan, bias=bias, scale=scale, dropout_p=dropout_p, drop_key=drop_key)


class _FlexBackend:
    auto_devices: tuple[str, ...] = ()

    def unavailable_reason(self, q, k, v, *, plan, bias, dropout_p, needs_grad, score_bound):
        from graphattn.nn import flex

        return (flex.unavailable_reason(q, plan=plan, bias=bias, dropout_p=dropout_p, needs_grad=needs_grad)
                or fp32_score_reason(q, score_bound))

    def attention(self, q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound):
        from graphattn.nn.flex import flex_graph_attention

        return flex_graph_attention(q, k, v, plan, bias=bias, scale=scale)


register(Backend.TORCH.value, _TorchBackend())
register(Backend.TRITON.value, _TritonBackend())
register(Backend.FLEX.value, _FlexBackend())
