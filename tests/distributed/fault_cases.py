"""Per-rank workers of the fault tests (spawned processes import this module by name).

Each worker plans a small sharded attention on every rank, then one rank fails in the middle of
the step (exits, is killed, raises, or hangs) while the others are in the step's first exchange;
or the ranks disagree on the graph. Workers that expect an error they can catch save its text
for the parent to check.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import torch
import torch.distributed as dist

from graphattn import distributed as gd
from graphattn import rules


def _step_inputs(rank, world):
    g = rules.longformer(24, radius=1, global_indices=[0])
    span = gd.local_range(g.num_nodes, rank, world)
    plan = gd.shard_plan(g)  # planning completes on every rank
    q = torch.randn(len(span), 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    return plan, q


def fail_mid_step(rank, world, failures):
    """``failures``: {rank: how} with how in exit, kill, raise, hang."""
    plan, q = _step_inputs(rank, world)
    how = failures.get(rank)
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "hang":
        time.sleep(3600)
    bias = torch.zeros(1, 1, dtype=torch.float64) if how == "raise" else None  # a wrong shape: ValueError
    gd.graph_attention(q, q, q, plan, bias=bias).sum().backward()


class _BrokenStore(dist.Store):
    """A store whose every call fails (the store went down with its host)."""

    def __init__(self):
        super().__init__()


def disagree(rank, world, out_dir):
    """Errors every rank catches: graphs that differ across ranks, a collective that fails on
    every rank at once, a store that is gone."""
    msgs = {}
    q = torch.zeros(10, 1, 2)
    try:  # same rule, different seeds
        gd.shard_plan(functools.partial(rules.bigbird, 40, block_size=4, seed=rank), num_nodes=40)
    except ValueError as e:
        msgs["seed"] = str(e)
    try:  # AttentionGraphs of different sizes
        gd.graph_attention(q, q, q, rules.band(20 + rank, radius=1))
    except ValueError as e:
        msgs["n"] = str(e)
    try:  # same size, different edges
        gd.shard_plan(rules.band(20, radius=1 + rank))
    except ValueError as e:
        msgs["edges"] = str(e)
    # A record left by an error this rank recovered from is cleared by its next collective.
    if rank == 1:
        gd.record_failure(ValueError("recovered from"))
    gd.shard_plan(rules.band(20, radius=1))
    try:  # every rank's collective fails and every rank answers: no one to blame
        with gd.faults.collective("a test collective"):
            raise RuntimeError("failed on every rank")
    except gd.RankFailure as e:
        msgs["everyone"] = str(e)
        msgs["everyone_failed"] = e.failed
    gd.configure_faults(store=_BrokenStore())
    try:
        with gd.faults.collective("a test collective"):
            raise RuntimeError("failed again")
    except gd.RankFailure as e:
        msgs["store"] = str(e)
    torch.save(msgs, os.path.join(out_dir, f"rank{rank}.pt"))
