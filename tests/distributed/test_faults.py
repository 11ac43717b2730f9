"""Faults fail fast: a rank that exits, is killed, raises or hangs mid-step makes every other
rank raise a RankFailure naming it, within the collective timeout plus the grace period (the
spawned processes are bounded by spawn's deadline, so a hang fails the test instead of hanging
it); ranks holding different graphs are named at planning; and the other error paths."""

from __future__ import annotations

import os
import re
import tempfile

import pytest
import torch
from tests.distributed.fault_cases import disagree, fail_mid_step

from graphattn import distributed as gd


def _run_failing(world, failures, **kw):
    with pytest.raises(gd.SpawnError) as info:
        gd.spawn(fail_mid_step, world, failures, **kw)
    return info.value


def _assert_named(err, survivors, failed_rank, what):
    for r in survivors:
        msg = err.outcomes[r]
        assert msg.startswith("RankFailure: "), (r, msg)
        assert re.search(rf"rank {failed_rank} {what}", msg), (r, msg)


def test_a_rank_that_exits_is_named_by_the_others():
    err = _run_failing(2, {1: "exit"}, timeout_s=60, grace_s=1, deadline_s=120)
    assert err.outcomes[1] == "exited with code 3"
    # rank 0 was in the forward's exchange: the closed connection fails it at once, and rank 1
    # never answers on the store
    _assert_named(err, [0], 1, "did not answer within 1 s")
    assert "all_to_all_single" in err.outcomes[0]


def test_a_rank_that_raises_is_named_with_its_error():
    err = _run_failing(2, {1: "raise"}, timeout_s=60, grace_s=30, deadline_s=120)
    assert err.outcomes[1].startswith("ValueError: expected bias of shape")
    # the record on the store names the cause without waiting for the grace period
    _assert_named(err, [0], 1, r"raised ValueError: expected bias of shape \[")


@pytest.mark.slow
def test_a_killed_and_an_exited_rank_are_both_named():
    err = _run_failing(4, {1: "exit", 3: "kill"}, timeout_s=60, grace_s=2, deadline_s=120)
    assert err.outcomes[3] == "was killed by signal 9" and err.outcomes[1] == "exited with code 3"
    for r in (0, 2):
        assert "rank 1 did not answer" in err.outcomes[r] and "rank 3 did not answer" in err.outcomes[r]


@pytest.mark.slow
def test_a_hung_rank_is_named_after_the_timeout():
    # rank 1 sleeps in the middle of the step: the others' exchange times out after 2 s, they
    # wait 1 s for answers and name it; spawn kills rank 1 at its deadline
    err = _run_failing(3, {1: "hang"}, timeout_s=2, grace_s=1, deadline_s=40)
    assert err.outcomes[1].startswith("did not finish within the deadline of 40 s")
    _assert_named(err, [0, 2], 1, "did not answer within 1 s")


def test_ranks_that_disagree_on_the_graph_are_named():
    with tempfile.TemporaryDirectory() as tmp:
        gd.spawn(disagree, 2, tmp, timeout_s=60, grace_s=5, deadline_s=120)
        msgs = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for m in msgs:
        assert m["seed"].startswith("expected the same graph on every rank of the group, got 2 different ones")
        assert "rank 0: graphattn.rules.block_sparse.bigbird(40, block_size=4, seed=0) over 40 nodes" in m["seed"]
        assert "rank 1: graphattn.rules.block_sparse.bigbird(40, block_size=4, seed=1) over 40 nodes" in m["seed"]
        assert "rank 0: an AttentionGraph over 20 nodes with 58 edges" in m["n"]
        assert "rank 1: an AttentionGraph over 21 nodes with 61 edges" in m["n"]
        assert "rank 0: an AttentionGraph over 20 nodes with 58 edges" in m["edges"]
        assert "rank 1: an AttentionGraph over 20 nodes with 94 edges" in m["edges"]
        # a failure every rank saw at once: nobody is blamed (the stale record of rank 1, an
        # error it recovered from, was cleared by its next collective)
        assert "failed because every rank answered and none recorded an error" in m["everyone"]
        assert m["everyone_failed"] == {}
        assert "the store that would name the failed rank is unreachable" in m["store"]


def test_collective_error_without_a_process_group():
    with pytest.raises(gd.RankFailure, match=r"a test collective failed \(RuntimeError: boom\); no store"):
        with gd.faults.collective("a test collective"):
            raise RuntimeError("boom")
    # other exceptions pass through untouched
    with pytest.raises(KeyError):
        with gd.faults.collective("a test collective"):
            raise KeyError("x")


def test_fault_and_spawn_argument_errors():
    with pytest.raises(ValueError, match="expected grace_s >= 0.0, got -1.0"):
        gd.configure_faults(grace_s=-1)
    with pytest.raises(TypeError, match="expected store to be a torch.distributed.Store, got dict"):
        gd.configure_faults(store={})
    with pytest.raises(ValueError, match="expected world_size >= 1, got 0"):
        gd.spawn(fail_mid_step, 0, {})
    with pytest.raises(ValueError, match="expected timeout_s >= 0.001, got 0.0"):
        gd.spawn(fail_mid_step, 1, {}, timeout_s=0)
    with pytest.raises(ValueError, match="expected deadline_s >= 0.0, got -2.0"):
        gd.spawn(fail_mid_step, 1, {}, deadline_s=-2)
    gd.record_failure(ValueError("no process group: nothing to record"))  # a no-op, no error
