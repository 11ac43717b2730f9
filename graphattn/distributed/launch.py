"""Run a function on several local processes with a gloo process group (CPU testing helper).

On GPUs, launch with ``torchrun`` and NCCL instead (see the README); the attention code is the
same. Unlike ``torch.multiprocessing.spawn``, which kills the other processes as soon as one
fails, :func:`spawn` lets every process finish (or fail) on its own, up to ``deadline_s``, and
reports what happened on each rank: a failing rank's peers raise
:class:`~graphattn.distributed.RankFailure` naming it (see
:mod:`graphattn.distributed.faults`), and that is what :class:`SpawnError` shows.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

from graphattn._validate import check_float, check_int
from graphattn.distributed.faults import configure_faults, record_failure

__all__ = ["spawn", "SpawnError"]


class SpawnError(RuntimeError):
    """One or more spawned ranks failed. ``outcomes``: ``{rank: what happened}`` for every rank
    that did not return normally (its exception's first line, its exit code, or that it was
    killed at the deadline); ``tracebacks``: ``{rank: text}`` where an exception was raised."""

    def __init__(self, message: str, outcomes: dict, tracebacks: dict):
        super().__init__(message)
        self.outcomes = dict(outcomes)
        self.tracebacks = dict(tracebacks)


def _entry(rank: int, fn, world_size: int, init_file: str, timeout_s: float, grace_s: float,
           threads: int | None, out_dir: str, args):
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    store = dist.FileStore(init_file, world_size)  # a file outlives any rank: faults stay readable
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    configure_faults(grace_s=grace_s, store=store)
    try:
        fn(rank, world_size, *args)
    except BaseException as exc:
        record_failure(exc)
        first = str(exc).strip().splitlines()
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(f"{type(exc).__name__}: {first[0] if first else ''}\n{traceback.format_exc()}")
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave without tearing the (possibly broken) group down: peers are told by the store
        # and by the closed connections, not by a collective shutdown.
        os._exit(1)
    dist.destroy_process_group()


def spawn(fn, world_size: int, *args, timeout_s: float = 120.0, grace_s: float | None = None,
          deadline_s: float | None = None, threads: int | None = 1) -> None:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes of one gloo group.

    ``fn`` must be importable by name (a module-level function: processes are spawned, not
    forked). Returns when every process returned; raises :class:`SpawnError` naming each rank
    that raised, exited with an error, or was still running at the deadline.

    Args:
        timeout_s: the group's collective timeout: a collective waiting longer fails (and the
            rank names the culprit, see :mod:`graphattn.distributed.faults`).
        grace_s: how long a rank whose collective failed waits for the others to answer before
            naming the silent ones (default ``min(timeout_s, 10)``).
        deadline_s: kill the processes still running this many seconds after the start (default
            None: wait for them).
        threads: torch threads per process (default 1, so that ``world_size`` processes share the
            cores instead of oversubscribing them; ``None`` keeps torch's default).
    """
    world_size = check_int("world_size", world_size, minimum=1)
    timeout_s = check_float("timeout_s", timeout_s, minimum=0.001)
    grace_s = min(timeout_s, 10.0) if grace_s is None else check_float("grace_s", grace_s, minimum=0.0)
    if deadline_s is not None:
        deadline_s = check_float("deadline_s", deadline_s, minimum=0.0)
    if threads is not None:
        threads = check_int("threads", threads, minimum=1)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="graphattn-dist-") as tmp:
        init_file = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_entry, args=(r, fn, world_size, init_file, timeout_s, grace_s, threads,
                                                  tmp, args)) for r in range(world_size)]
        for p in procs:
            p.start()
        end = None if deadline_s is None else time.monotonic() + deadline_s
        while any(p.is_alive() for p in procs) and (end is None or time.monotonic() < end):
            time.sleep(0.05)
        outcomes, tracebacks = {}, {}
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                p.join()
                outcomes[r] = f"did not finish within the deadline of {deadline_s:g} s (killed)"
                continue
            p.join()
            if p.exitcode == 0:
                continue
            err = os.path.join(tmp, f"rank{r}.error")
            if os.path.exists(err):
                with open(err) as f:
                    text = f.read()
                outcomes[r] = text.split("\n", 1)[0]
                tracebacks[r] = text
            elif p.exitcode < 0:
                outcomes[r] = f"was killed by signal {-p.exitcode}"
            else:
                outcomes[r] = f"exited with code {p.exitcode}"
    if outcomes:
        lines = "\n".join(f"  rank {r}: {msg}" for r, msg in sorted(outcomes.items()))
        raise SpawnError(f"{len(outcomes)} of {world_size} ranks failed:\n{lines}", outcomes, tracebacks)
