import pytest
import torch

from graphattn.bench import models
from graphattn.bench.__main__ import main


@pytest.mark.parametrize("suite,variant,mode", [
    ("encoder", "plain", "fwd+bwd"), ("encoder", "reversible+chunked", "fwd+bwd"),
    ("ffn", "chunks=4", "fwd"), ("attention", "lsh", "fwd+bwd"), ("attention", "routing", "fwd"),
    ("attention", "dense", "fwd+bwd"),
])
def test_cells_run_in_process_at_tiny_size(suite, variant, mode):
    r = models.run_cell(suite, variant, n=64, E=16, H=2, depth=2, mode=mode, repeats=1)
    assert r["time_s"] > 0 and r["peak_rss_gib"] >= r["base_rss_gib"] > 0


def test_dense_peer_is_full_attention():
    torch.manual_seed(0)
    layer = models._DenseAttention(8, 2)
    x = torch.randn(5, 8)
    q, k, v = layer.qkv(x).view(5, 3, 2, 4).permute(1, 2, 0, 3)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ref = layer.out((w @ v).transpose(0, 1).reshape(5, 8))
    torch.testing.assert_close(layer(x), ref)


def test_models_suite_table(monkeypatch, capsys):
    fake = iter(range(1, 1000))

    def spawn(spec, timeout, env=None):
        t = float(next(fake))
        return {"time_s": t, "peak_rss_gib": 2.0, "base_rss_gib": 0.5}

    monkeypatch.setattr(models, "_spawn", spawn)
    assert main(["models", "--n", "4096", "65536", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    assert "depth 3" in out and "| reversible+chunked | 4,096" in out
    assert "n^2 pairs: dense only up to 16,384" in out and "| chunks=16" in out
    assert out.count("| lsh ") == 4 and "1.50" in out  # peak - start
    assert "mmap 64K" in out
