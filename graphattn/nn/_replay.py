"""Recorded routing decisions for recomputation. Internal.

A :class:`~graphattn.nn.ReversibleSequence` recomputes every block in its backward from inputs
it reconstructs from the outputs. The reconstruction is exact only up to rounding, and a
content-based layer's discrete decisions (LSH buckets, routing clusters) could flip on a near
tie, so the recomputed graph could differ from the forward's. Layers therefore pass those
decisions through :func:`recorded`: during a reversible forward the value is computed and
appended to the current call's tape; during the recomputation the tape is read back in order
(as Hugging Face's Reformer caches buckets for its backward). Outside a reversible sequence it
is a plain call. The tape holds a few integers per token and head, not activations.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable

__all__ = ["Tape", "recorded", "use_tape"]


class Tape:
    __slots__ = ("values", "replaying", "pos")

    def __init__(self):
        self.values: list[Any] = []
        self.replaying = False
        self.pos = 0


_CURRENT: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("graphattn_tape", default=None)


@contextlib.contextmanager
def use_tape(tape: Tape | None, *, replay: bool):
    """Record onto (``replay=False``) or read back from (``replay=True``) ``tape``."""
    if tape is not None:
        tape.replaying, tape.pos = replay, 0
    token = _CURRENT.set(tape)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def recorded(compute: Callable[[], Any]) -> Any:
    """``compute()``, recorded on the active tape or read back from it."""
    tape = _CURRENT.get()
    if tape is None:
        return compute()
    if tape.replaying:
        if tape.pos >= len(tape.values):
            raise RuntimeError("reversible recomputation asked for more recorded decisions than the "
                               "forward made (a block's control flow changed between forward and backward)")
        value = tape.values[tape.pos]
        tape.pos += 1
        return value
    value = compute()
    tape.values.append(value)
    return value
