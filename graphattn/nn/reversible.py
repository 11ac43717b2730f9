"""Reformer's memory savers: reversible residual blocks and the chunked feed-forward."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from graphattn._validate import check_bool, check_int
from graphattn.nn._replay import Tape, use_tape

__all__ = ["ReversibleSequence", "chunked_feed_forward"]


class _CallState:
    """What one call of ``f`` or ``g`` needs to be replayed exactly in the backward: the RNG
    states it started from (CPU, and the CUDA device of the input), the values before the call
    of the module buffers the call changed (running statistics, routing centroids), and the
    tape of the discrete decisions its content-based layers made (see :mod:`._replay`)."""

    __slots__ = ("cpu", "cuda", "buffers", "tape")

    def __init__(self, module: nn.Module, x: torch.Tensor):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        self.buffers: dict[int, torch.Tensor] | list[torch.Tensor] | None = [
            b.detach().clone() for b in module.buffers()]
        self.tape = Tape()

    @contextlib.contextmanager
    def record(self, module: nn.Module):
        with use_tape(self.tape, replay=False):
            yield
        # Keep the snapshots of the buffers this call changed only; the others need no restoring.
        changed = {n: old for n, (old, buf) in enumerate(zip(self.buffers, module.buffers()))
                   if not torch.equal(old, buf)}
        self.buffers = changed or None

    @contextlib.contextmanager
    def replay(self, module: nn.Module, x: torch.Tensor):
        devices = [x.device] if self.cuda is not None else []
        current = None
        if self.buffers:
            bufs = list(module.buffers())
            current = {n: bufs[n].detach().clone() for n in self.buffers}
            _load(bufs, self.buffers)
        try:
            with torch.random.fork_rng(devices=devices), use_tape(self.tape, replay=True):
                torch.set_rng_state(self.cpu)
                if self.cuda is not None:
                    torch.cuda.set_rng_state(self.cuda, x.device)
                yield
        finally:
            if current is not None:  # the recomputation must not change the module's state
                _load(list(module.buffers()), current)


def _load(buffers: list[torch.Tensor], values: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, val in values.items():
            buffers[n].copy_(val)


def _grads(outputs, inputs, grad_outputs):
    return torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)


class _ReversibleFunction(torch.autograd.Function):
    """Runs the blocks without autograd and saves only the final outputs; the backward walks the
    blocks in reverse, reconstructing each block's inputs from its outputs."""

    @staticmethod
    def forward(ctx, x1, x2, seq, kwargs, params_key, *params):
        states = []
        with torch.no_grad():
            for (f, g) in seq.pairs():
                sf = _CallState(f, x2)
                with sf.record(f):
                    y1 = x1 + f(x2, **kwargs[0])
                sg = _CallState(g, y1)
                with sg.record(g):
                    y2 = x2 + g(y1, **kwargs[1])
                states.append((sf, sg))
                x1, x2 = y1, y2
        ctx.seq, ctx.kwargs, ctx.states, ctx.params = seq, kwargs, states, params_key
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        index = {id(p): n for n, p in enumerate(ctx.params)}
        pgrads: list[torch.Tensor | None] = [None] * len(ctx.params)

        def accumulate(params, grads):
            for p, gr in zip(params, grads):
                if gr is not None:
                    n = index[id(p)]
                    pgrads[n] = gr if pgrads[n] is None else pgrads[n] + gr

        def undo(fn, state, inp, out, d_out, kwargs):
            """Invert ``out = other + fn(inp)``: recompute ``fn(inp)`` (replaying its randomness),
            back-propagate ``d_out`` through it; returns ``other`` and the gradient to ``inp``."""
            params = [p for p in fn.parameters() if p.requires_grad]
            with torch.enable_grad(), state.replay(fn, inp):
                inp_ = inp.detach().requires_grad_(True)
                h = fn(inp_, **kwargs)
                grads = _grads(h, [inp_, *params], d_out)
            accumulate(params, grads[1:])
            with torch.no_grad():
                other = out - h
            return other, grads[0]

        dy1 = torch.zeros_like(y1) if dy1 is None else dy1
        dy2 = torch.zeros_like(y2) if dy2 is None else dy2
        for (f, g), (sf, sg) in zip(reversed(ctx.seq.pairs()), reversed(ctx.states)):
            x2, d = undo(g, sg, y1, y2, dy2, ctx.kwargs[1])  # y2 = x2 + g(y1)
            dy1 = dy1 + d if d is not None else dy1
            x1, d = undo(f, sf, x2, y1, dy1, ctx.kwargs[0])  # y1 = x1 + f(x2)
            dx2 = dy2 + d if d is not None else dy2
            y1, y2, dy2 = x1, x2, dx2  # dx1 = dy1
        return (dy1, dy2, None, None, None, *pgrads)


def _check_kwargs(name: str, kwargs) -> dict:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"expected {name} to be a dict or None, got {type(kwargs).__name__}")
    for key, val in kwargs.items():
        if isinstance(val, torch.Tensor) and val.requires_grad:
            raise ValueError(f"expected {name}[{key!r}] not to require grad (extra arguments of a reversible "
                             "block receive no gradient); make it a parameter of the block instead")
    return kwargs


class ReversibleSequence(nn.Module):
    r"""A stack of reversible residual blocks (RevNet: Gomez, Ren, Urtasun and Grosse, "The
    Reversible Residual Network", NeurIPS 2017; as used by Reformer, Kitaev et al., ICLR 2020).

    Block ``l`` with modules ``(f_l, g_l)`` maps ``(x_1, x_2)`` to

    .. math::
        y_1 = x_1 + f_l(x_2), \qquad y_2 = x_2 + g_l(y_1),

    which is invertible: ``x_2 = y_2 - g_l(y_1)``, ``x_1 = y_1 - f_l(x_2)``. The forward runs
    without autograd and keeps only the last block's outputs; the backward walks the blocks in
    reverse, reconstructing each block's inputs from its outputs and recomputing ``f_l`` and
    ``g_l`` with autograd to get the gradients. Activation memory therefore does not grow with
    depth (one block's activations live at a time, during its backward), at the cost of one
    extra forward of every block.

    Gradients equal those of the plain residual computation, for the inputs and for every
    parameter of every ``f`` and ``g``: the parameters are inputs of the underlying autograd
    function, so ``loss.backward()`` accumulates into their ``.grad`` and
    ``torch.autograd.grad(loss, params)`` returns them, like any other module. Randomness
    (dropout, LSH rotations drawn per training forward) is replayed: the RNG state (CPU, and
    CUDA for CUDA inputs) before each ``f`` and ``g`` call is recorded and restored, inside
    ``torch.random.fork_rng``, for its recomputation, so the same masks are drawn and the global
    RNG is left as the plain forward leaves it. Module buffers (batch-norm statistics,
    :class:`RoutingAttention` centroids) are snapshotted before each call and restored around the
    recomputation, so it sees the forward's state and updates nothing twice. The reconstruction
    is exact only up to floating-point rounding (``x_2 = (x_2 + g) - g``), so the discrete
    decisions of content-based layers (:class:`LSHAttention` buckets, :class:`RoutingAttention`
    clusters) are recorded in the forward and read back by the recomputation, as Hugging Face's
    Reformer caches buckets: the recomputed graph is the forward's graph. These records (a few
    integers per token, head and layer), the buffer snapshots and the RNG states are all that
    is kept per block. Higher-order gradients are not supported. When autograd is not
    recording (``torch.no_grad()``, or nothing requires grad) the blocks simply run in sequence.

    Args:
        blocks: a sequence of ``(f, g)`` pairs of :class:`torch.nn.Module` (each maps a tensor of
            the stream's shape to that shape).

    Shapes:
        - **x1**, **x2**: the two streams, any shape the blocks accept (equal shapes)
        - **output**: ``(y1, y2)`` of the same shapes
        - **f_kwargs**, **g_kwargs** (optional): extra keyword arguments passed to every ``f``
          (``g``) call, e.g. an attention graph; tensors there must not require grad.

    >>> lin = lambda: torch.nn.Linear(4, 4)
    >>> seq = ReversibleSequence([(lin(), lin()), (lin(), lin())])
    >>> y1, y2 = seq(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4))
    >>> y1.shape, y2.shape
    (torch.Size([3, 4]), torch.Size([3, 4]))
    """

    def __init__(self, blocks: Sequence[tuple[nn.Module, nn.Module]]):
        super().__init__()
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
            raise TypeError(f"expected blocks to be a sequence of (f, g) module pairs, got {type(blocks).__name__}")
        pairs = nn.ModuleList()
        for n, pair in enumerate(blocks):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"expected blocks[{n}] to be an (f, g) pair, got {type(pair).__name__}")
            for name, mod in zip("fg", pair):
                if not isinstance(mod, nn.Module):
                    raise TypeError(f"expected blocks[{n}] {name} to be a torch.nn.Module, got {type(mod).__name__}")
            pairs.append(nn.ModuleList(pair))
        self.blocks = pairs

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(p[0], p[1]) for p in self.blocks]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *, f_kwargs: dict | None = None,
                g_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        for name, t in (("x1", x1), ("x2", x2)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if x1.shape != x2.shape:
            raise ValueError(f"expected x1 and x2 of one shape, got {list(x1.shape)} and {list(x2.shape)}")
        kwargs = (_check_kwargs("f_kwargs", f_kwargs), _check_kwargs("g_kwargs", g_kwargs))
        params = list({id(p): p for p in self.parameters() if p.requires_grad}.values())
        recording = torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad or bool(params))
        if not recording or not len(self.blocks):
            for f, g in self.pairs():
                x1 = x1 + f(x2, **kwargs[0])
                x2 = x2 + g(x1, **kwargs[1])
            return x1, x2
        return _ReversibleFunction.apply(x1, x2, self, kwargs, tuple(params), *params)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(depth={len(self.blocks)})"


def chunked_feed_forward(ff: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, chunks: int,
                         dim: int = -2, checkpoint_chunks: bool = True) -> torch.Tensor:
    """Apply a position-wise module ``ff`` to ``x`` in ``chunks`` pieces along ``dim`` (Reformer's
    chunked feed-forward, Kitaev et al., ICLR 2020, section 3: the FFN's ``[N, d_ff]`` hidden
    activation is the largest tensor of a layer, and position-wise it can be computed a slice
    of the sequence at a time).

    ``x`` is split into ``chunks`` pieces whose lengths differ by at most one (the lengths of
    ``torch.tensor_split``); pieces that come out empty (``chunks`` larger than the length) are
    skipped, so any ``chunks >= 1`` is allowed. The output is ``torch.cat([ff(piece) ...], dim)``: the same as
    ``ff(x)`` for a position-wise ``ff`` (equal up to floating-point summation order of the
    kernels on a smaller batch).

    Memory: without autograd (inference, or the no-grad forward of a
    :class:`ReversibleSequence`) only one chunk's hidden activation exists at a time. With
    autograd recording, plain chunking would still keep every chunk's hidden activation for the
    backward, so by default (``checkpoint_chunks=True``) each chunk runs under
    ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved so dropout masks match): only
    the chunk inputs are kept and each chunk's hidden activation is recomputed in its backward,
    one chunk at a time, for one extra forward of ``ff``. ``checkpoint_chunks=False`` keeps the
    activations (no recomputation, no saving).

    Shapes:
        - **x**: any shape; ``dim`` is the sequence axis (default ``-2`` for ``[..., N, E]``)
        - **output**: ``ff``'s output shape

    >>> ff = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(2, 10, 4)
    >>> torch.allclose(chunked_feed_forward(ff, x, chunks=3), ff(x), atol=1e-6)
    True
    """
    if not callable(ff):
        raise TypeError(f"expected ff to be callable (a module), got {type(ff).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    chunks = check_int("chunks", chunks, minimum=1)
    dim = check_int("dim", dim)
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"expected dim in [{-x.dim()}, {x.dim() - 1}] for x of shape {list(x.shape)}, got {dim}")
    check_bool("checkpoint_chunks", checkpoint_chunks)
    length = x.shape[dim]
    base, extra = divmod(length, chunks)
    sizes = [base + 1] * extra + [base] * (chunks - extra)  # torch.tensor_split's lengths
    sizes = [size for size in sizes if size > 0]
    if len(sizes) <= 1:  # one piece (or an empty sequence): nothing to chunk
        return ff(x)
    # torch.split: one backward node that concatenates the pieces' gradients (slicing pieces
    # one by one would give each piece a full-size zero gradient to accumulate).
    pieces = torch.split(x, sizes, dim=dim)
    recording = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for p in (ff.parameters() if isinstance(ff, nn.Module) else ())))
    if checkpoint_chunks and recording:
        outs = [checkpoint(ff, p, use_reentrant=False, preserve_rng_state=True) for p in pieces]
    else:
        outs = [ff(p) for p in pieces]
    return torch.cat(outs, dim=dim)
