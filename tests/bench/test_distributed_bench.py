"""The sequence-parallel planning tool: simulated traffic against hand counts, the CLI at a tiny
scale, and (slow) the measured gloo run."""

import pytest

from graphattn.bench.__main__ import main
from graphattn.bench.distributed import measure_gloo, traffic


def _by_plan(rows, world):
    return {r["plan"]: r for r in rows if r["world"] == world}


def test_band_halo_is_two_radii_whatever_n():
    for n in (1024, 4096):
        s = _by_plan(traffic("band r=128", n, [8]), 8)
        assert s["keys"]["kv_max"] == s["plan"]["kv_max"] == 256 and s["plan"]["moving"] == 0
        assert s["plan"]["local"] == n // 8
        # forward: 256 rows x 4 heads x (64 + 64) fp32
        assert s["plan"]["fwd_max"] == 256 * 4 * 128 * 4


def test_global_rows_stop_pulling_the_sequence():
    n = 4096
    s = _by_plan(traffic("longformer r=128 +2 global", n, [8]), 8)
    # keys only: the owner of tokens 0 and 1 receives every other key
    assert s["keys"]["kv_max"] == n - n // 8
    # the plan: it broadcasts its two global rows instead and gets one sum of the parts a row
    # back; every rank keeps its window halo (plus the two global keys)
    assert s["plan"]["moving"] == 1 and s["plan"]["kv_max"] == 258
    assert s["plan"]["partials_max"] == 2 and s["plan"]["queries_max"] == 2
    assert s["plan"]["fwd_max"] / s["plan"]["fwd_mean"] < 2 < s["keys"]["fwd_max"] / s["keys"]["fwd_mean"]


def test_random_keys_stay_as_they_are():
    s = _by_plan(traffic("random r=32", 2048, [4]), 4)
    assert s["plan"]["moving"] == 0 and s["plan"]["kv_max"] == s["keys"]["kv_max"]
    # 512 queries x 32 random keys among 2048 nodes: nearly all of the 1536 remote rows
    assert s["plan"]["kv_max"] > 0.99 * 1536


def test_cli_plan_only(capsys):
    assert main(["distributed", "--n", "1024", "--world", "2", "16", "--patterns", "band r=128",
                 "star", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "| band r=128" in out and "| star " in out and "measured" not in out
    rows = [line for line in out.splitlines() if line.startswith("| band") or line.startswith("| star")]
    assert sorted(line.split("|")[5].strip() for line in rows) == ["keys"] * 4 + ["plan"] * 4


@pytest.mark.slow
def test_measured_gloo_run_at_tiny_scale():
    r = measure_gloo(2, pattern="longformer r=128 +2 global", n=512, H=1, D=4, repeats=1)
    assert r["step"] > 0 and r["bytes_max"] > 0
