"""Failures that fail fast: a rank that raises, exits or hangs makes every other rank raise an
error that names it, within a bounded time, instead of waiting forever.

What torch.distributed does by itself, and what this module adds:

- **Collective timeouts** (``init_process_group(timeout=...)``, ``spawn(timeout_s=...)``): a
  gloo collective waiting longer than the timeout raises; one whose peer process exited raises
  at once ("connection closed by peer"). Neither error says which rank is at fault.
- **The store** (the key-value store every process group is built on; it outlives any rank
  when it is a file, and lives in the launcher under ``torchrun``) carries the diagnosis:
  a rank that raises inside :mod:`graphattn.distributed` (or inside a function run by
  :func:`~graphattn.distributed.spawn`) records ``"<Type>: <message>"`` under its rank before
  the exception propagates; a rank whose collective fails records that it is alive and then
  waits, at most ``grace_s`` seconds, until it can tell the cause: the first recorded error
  ends the wait; otherwise the ranks that did not answer (exited without a record, killed, or
  stuck) are named. It then raises :class:`RankFailure`.

``dist.monitored_barrier`` names missing ranks on gloo too, but only on rank 0, only when rank 0
is alive, and it is itself a collective on the group that just failed; the store works from any
rank whatever failed. A record is cleared by the rank's next successful collective (a rank that
raised, was caught, and went on is not blamed later).

Bounds: a rank that raises or exits is named within ``grace_s`` of the failed collective (at
once when it left a record); a rank that hangs, within the collective timeout plus
``grace_s``. The store is found from the default process group (torch's
``_get_default_store``), or given to :func:`configure_faults`.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch.distributed as dist

from graphattn._validate import check_float

__all__ = ["RankFailure", "configure_faults", "record_failure", "collective", "records_failures"]

_PREFIX = "graphattn/faults/"
_state = {"store": None, "grace_s": 10.0, "recorded": False, "seen": False}


class RankFailure(RuntimeError):
    """A collective failed on this rank because another rank raised, exited or hung.

    Attributes:
        rank: this process's global rank.
        failed: ``{rank: what happened}`` for the ranks found at fault.
    """

    def __init__(self, message: str, *, rank: int, failed: dict):
        super().__init__(message)
        self.rank = rank
        self.failed = dict(failed)


def configure_faults(*, grace_s: float | None = None, store=None) -> None:
    """Set how failures are diagnosed on this process (call it on every rank).

    Args:
        grace_s: how long a rank whose collective failed waits for the other ranks to answer
            before naming the silent ones (default 10 s).
        store: a ``torch.distributed.Store`` shared by the ranks (default: the default process
            group's store). ``None`` keeps the current choice.
    """
    if grace_s is not None:
        _state["grace_s"] = check_float("grace_s", grace_s, minimum=0.0)
    if store is not None:
        if not isinstance(store, dist.Store):
            raise TypeError(f"expected store to be a torch.distributed.Store, got {type(store).__name__}")
        _state["store"] = dist.PrefixStore(_PREFIX, store)


def _store():
    if _state["store"] is not None:
        return _state["store"]
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return dist.PrefixStore(_PREFIX, _get_default_store())
    except Exception:  # a torch without it, or a group built without a store
        return None


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _my_rank() -> int | None:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def record_failure(exc: BaseException) -> None:
    """Record on the store that this rank failed with ``exc`` (best effort; no-op without a
    process group). Call it before letting an exception end a rank that others wait on; the
    graphattn.distributed entry points and :func:`~graphattn.distributed.spawn` do."""
    rank, store = _my_rank(), _store()
    if rank is None or store is None or isinstance(exc, RankFailure):
        return
    try:
        store.set(f"error/{rank}", _summary(exc))
        _state["recorded"] = True
    except Exception:  # the store is gone too: nothing more to tell
        pass


def records_failures(fn):
    """Decorator: an exception leaving ``fn`` is recorded (:func:`record_failure`) first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            record_failure(exc)
            raise

    return wrapper


def _group_ranks(group) -> list[int]:
    world = dist.get_world_size(group)
    if group is None or group is dist.group.WORLD:
        return list(range(world))
    return [dist.get_global_rank(group, r) for r in range(world)]


@contextlib.contextmanager
def collective(what: str, group=None):
    """Run one collective: on success clear this rank's stale failure record; on a backend
    error, find out which rank is at fault and raise :class:`RankFailure` naming it."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, RankFailure):
            raise
        _diagnose(what, group, exc)
    if _state["recorded"] or _state["seen"]:
        # This rank is evidently still taking part: its earlier records are no one's cause now.
        store = _store()
        for kind in ("error", "seen"):
            if _state["recorded" if kind == "error" else "seen"] and store is not None:
                with contextlib.suppress(Exception):
                    store.delete_key(f"{kind}/{_my_rank()}")
        _state["recorded"] = _state["seen"] = False


def _diagnose(what: str, group, exc: BaseException):
    me = _my_rank()
    cause = _summary(exc)
    store = _store()
    if me is None or store is None:
        raise RankFailure(f"{what} failed ({cause}); no store to find out which rank failed",
                          rank=-1 if me is None else me, failed={}) from exc
    ranks = _group_ranks(group)
    grace = _state["grace_s"]
    errors, answered = {}, {me}
    try:
        store.set(f"seen/{me}", f"{what}: {cause}")
        _state["seen"] = True
        deadline = time.monotonic() + grace
        while True:
            for r in ranks:
                if r != me and r not in errors and store.check([f"error/{r}"]):
                    errors[r] = store.get(f"error/{r}").decode(errors="replace")
                if r not in answered and store.check([f"seen/{r}"]):
                    answered.add(r)
            if errors or len(answered) == len(ranks) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    except Exception as store_exc:  # the store died with the rank that hosted it
        raise RankFailure(f"rank {me}: {what} failed ({cause}), and the store that would name the failed "
                          f"rank is unreachable ({_summary(store_exc)}): the rank hosting it (rank 0 "
                          "unless a launcher hosts it) exited", rank=me, failed={}) from exc
    silent = [r for r in ranks if r not in answered and r not in errors]
    failed = {r: f"raised {msg}" for r, msg in sorted(errors.items())}
    if not errors:
        failed.update({r: f"did not answer within {grace:g} s (exited, was killed or is stuck)" for r in silent})
    if failed:
        blame = "; ".join(f"rank {r} {msg}" for r, msg in failed.items())
    else:
        blame = "every rank answered and none recorded an error"
    raise RankFailure(f"rank {me}: {what} failed because {blame} ({cause})", rank=me, failed=failed) from exc
