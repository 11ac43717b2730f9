"""The sequence-parallel planning tool: simulated halos against hand counts, the CLI at a tiny
scale, and (slow) the measured gloo run."""

import pytest

from graphattn.bench.__main__ import main
from graphattn.bench.distributed import _sampled_ranks, measure_gloo, simulate


def test_sampled_ranks_keep_first_and_last():
    assert _sampled_ranks(8, 16) == list(range(8))
    s = _sampled_ranks(1024, 16)
    assert s[0] == 0 and s[-1] == 1023 and len(s) == 16


def test_band_halo_is_two_radii_whatever_n():
    for n in (4096, 16384):
        s = simulate("band r=128", n, 8)
        assert s["recv_median"] == 256 and s["recv_max"] == 256
        assert s["local"] == n // 8 and s["ratio_median"] == pytest.approx(256 / (n // 8))


def test_random_keys_need_almost_every_row():
    s = simulate("random r=32", 4096, 4)
    # 1024 queries x 32 random keys among 4096 nodes: 1 - (1 - 1/4096)^32768 of the 3072 remote rows
    assert s["recv_median"] > 0.99 * 3072


def test_cli_plan_only(capsys):
    assert main(["distributed", "--n", "2048", "--world", "2", "16", "--patterns", "band r=128",
                 "bigbird b=64", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "| band r=128" in out and "| bigbird b=64" in out and "measured" not in out


@pytest.mark.slow
def test_measured_gloo_run_at_tiny_scale():
    r = measure_gloo(2, n=512, radius=4, H=1, D=4, repeats=1)
    assert r["received"] == 4 and r["step"] > 0 and r["exchange"] > 0
