"""Non-finite inputs stay where the graph puts them (internal).

Semantics (documented in :func:`graphattn.nn.graph_attention`): a query ``(i, h)`` is
*poisoned* when ``q[i, h]`` holds a NaN or an infinity, or when one of its edges ``(j, i)``
(of head ``h``) has a non-finite ``k[j, h]`` or ``v[j, h]`` or a NaN bias. A poisoned query's
output and lse are NaN; every other query's output is exactly what it would be without the
poisoned inputs. In the backward, NaN reaches exactly the gradients that depend on a poisoned
query (``dq[i]`` and the bias of its edges, ``dk[j]`` and ``dv[j]`` of the keys it attends) or on
a non-finite row of the incoming gradient; every other gradient entry is exact. A ``-inf`` bias
removes its edge.

A dense kernel would spread a NaN across its tile (``0 * NaN = NaN`` in the matmuls, ``-inf``
minus a NaN max), so a call with non-finite inputs runs on *sanitised* inputs (non-finite rows
zeroed, NaN biases zeroed) and NaN is written back where the semantics above put it, forward
and backward, by the marks below. A call without non-finite inputs pays one reduction per
input (:func:`screen`) and installs nothing.
"""

from __future__ import annotations

import torch

__all__ = ["screen", "Poison"]


def _maybe_bad(t: torch.Tensor | None) -> bool:
    # One reduction: a NaN or an infinity makes the sum non-finite (so does an overflowing sum of
    # finite values, a false alarm that the exact per-row check below clears).
    return t is not None and t.numel() > 0 and not bool(torch.isfinite(t.sum()))


def _bad_rows(t: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(t).all(-1)


def _spread(rows_bad: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, size: int, ok: torch.Tensor | None):
    """``out[dst[e], h] |= rows_bad[src[e], h]`` over the edges (and heads ``ok`` allows)."""
    hit = rows_bad[src]
    if ok is not None:
        hit = hit & ok
    out = torch.zeros(size, rows_bad.shape[1], dtype=torch.int32, device=rows_bad.device)
    out.index_add_(0, dst, hit.to(torch.int32))
    return out > 0


class Poison:
    """Where a call's non-finite inputs reach (see the module docstring). A *clean* poison
    (every forward input finite) marks nothing in the forward and only screens the incoming
    gradient in the backward."""

    def __init__(self, q, k, v, bias, edges, head_mask, *, clean: bool = False):
        # edges: a callable giving the edge_index (a structured graph builds it only if needed)
        self._edges, self.head_mask, self.nk = edges, head_mask, k.shape[0]
        self._backward_rows: torch.Tensor | None = None
        self.bad_q = self.bad_k = self.bad_v = self.bad_bias = self.rows = None
        if clean:
            return
        key, query = self.edge_index[0], self.edge_index[1]
        self.bad_q, self.bad_k, self.bad_v = _bad_rows(q), _bad_rows(k), _bad_rows(v)
        self.bad_bias = None if bias is None else torch.isnan(bias)
        # Edges (per head) through which a bad key, value or bias reaches its query.
        bad_edge = (self.bad_k | self.bad_v)[key]
        if self.bad_bias is not None:
            bad_edge = bad_edge | self.bad_bias
        if head_mask is not None:
            bad_edge = bad_edge & head_mask
        hits = torch.zeros(q.shape[0], q.shape[1], dtype=torch.int32, device=q.device)
        hits.index_add_(0, query, bad_edge.to(torch.int32))
        self.rows = self.bad_q | (hits > 0)  # poisoned queries [Nq, H]

    @property
    def edge_index(self) -> torch.Tensor:
        return self._edges()

    @staticmethod
    def find(q, k, v, bias, edges, head_mask) -> "Poison | None":
        """The poison of this call; a clean one when every input is finite and gradients are
        needed (to screen the incoming gradient); None when neither."""
        if any(_maybe_bad(t) for t in (q, k, v, bias)):
            p = Poison(q, k, v, bias, edges, head_mask)
            if bool(p.rows.any() or p.bad_k.any() or p.bad_v.any()):
                return p
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias)):
            return Poison(q, k, v, bias, edges, head_mask, clean=True)
        return None

    # ---- what the backward poisons: the forward's poisoned queries and the queries whose
    # incoming gradient is not finite
    def _rows_backward(self) -> torch.Tensor | None:
        if self.rows is None:
            return self._backward_rows
        return self.rows if self._backward_rows is None else self.rows | self._backward_rows

    def _keys_backward(self, rows) -> torch.Tensor:
        key, query = self.edge_index[0], self.edge_index[1]
        return _spread(rows, query, key, self.nk, self.head_mask)

    def _edges_backward(self, rows) -> torch.Tensor:
        e = rows[self.edge_index[1]]
        return e if self.head_mask is None else e & self.head_mask

    # ---- the marks
    def inputs(self, q, k, v, bias):
        """The sanitised inputs, each carrying the NaN its gradient gets in the backward."""
        q = _InputMark.apply(q, self.bad_q, self, "q")
        k = _InputMark.apply(k, self.bad_k, self, "k")
        v = _InputMark.apply(v, self.bad_v, self, "v")
        if bias is not None:
            bias = _InputMark.apply(bias, self.bad_bias, self, "bias")
        return q, k, v, bias

    def output(self, out, lse):
        """NaN on the poisoned queries; their incoming gradient does not enter the sanitised call,
        and non-finite rows of the incoming gradient poison the backward likewise."""
        return _OutputMark.apply(out, lse, self)


class _InputMark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bad, poison: Poison, which: str):
        ctx.poison, ctx.which = poison, which
        if bad is None:
            return x.view_as(x)
        return torch.where(bad if which == "bias" else bad[..., None], torch.zeros_like(x), x)

    @staticmethod
    def backward(ctx, grad):
        p = ctx.poison
        rows = p._rows_backward()
        if grad is None or rows is None:
            return grad, None, None, None
        if ctx.which == "q":
            mask = rows[..., None]
        elif ctx.which == "bias":
            mask = p._edges_backward(rows)
        else:
            mask = p._keys_backward(rows)[..., None]
        return torch.where(mask, torch.full_like(grad, float("nan")), grad), None, None, None


class _OutputMark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, lse, poison: Poison):
        ctx.poison = poison
        ctx.set_materialize_grads(False)
        rows = poison.rows
        if rows is None:
            return out.view_as(out), lse.view_as(lse)
        return (torch.where(rows[..., None], torch.full_like(out, float("nan")), out),
                torch.where(rows, torch.full_like(lse, float("nan")), lse))

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        p = ctx.poison
        dead = p.rows
        if grad_out is not None and _maybe_bad(grad_out):
            bad = _bad_rows(grad_out)
            dead = bad if dead is None else dead | bad
        if grad_lse is not None and _maybe_bad(grad_lse):
            bad = ~torch.isfinite(grad_lse)
            dead = bad if dead is None else dead | bad
        if dead is None:
            return grad_out, grad_lse, None
        p._backward_rows = dead
        if grad_out is not None:
            grad_out = torch.where(dead[..., None], torch.zeros_like(grad_out), grad_out)
        if grad_lse is not None:
            grad_lse = torch.where(dead, torch.zeros_like(grad_lse), grad_lse)
        return grad_out, grad_lse, None
