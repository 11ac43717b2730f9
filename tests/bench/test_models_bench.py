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
    assert out.count("| lsh ") == 6 and "1.50" in out  # attention: 2 n x 2 modes; routing: 2 n
    assert "mmap 64K" in out
    routing = out[out.index("content-based attention"):]
    assert "E=128" in routing and "| routing-transformer | 4,096" in routing and "time vs routing-transformer" in routing
    assert "| 64 per cluster" in routing and routing.count("| fwd") == 0


def test_routing_cells_run_in_process_at_tiny_size():
    for variant in ("routing", "lsh", "dense"):
        r = models.run_cell("routing", variant, n=128, E=16, H=2, depth=1, mode="fwd+bwd", repeats=1)
        assert r["time_s"] > 0 and r["peak_rss_gib"] >= r["base_rss_gib"] > 0
        assert ("keys_per_query" in r) == (variant != "dense")


def test_routing_peer_is_lucidrains_selfattention_with_our_clusters_and_window():
    pytest.importorskip("routing_transformer")
    from graphattn.bench.peers import lucidrains_routing

    layer = lucidrains_routing(256, 16, 2, 64)
    assert layer.global_attn.num_clusters == 4 and layer.global_attn.window_size == 64
    assert layer.local_attn_heads == 0 and layer.global_attn_heads == 2
    out, loss = layer.train()(torch.randn(1, 256, 16))
    assert out.shape == (1, 256, 16) and bool(out.isfinite().all())
    r = models.run_cell("routing", "routing-transformer", n=128, E=16, H=2, depth=1, mode="fwd+bwd", repeats=1)
    assert r["time_s"] > 0


def test_routing_peer_is_skipped_with_the_reason_when_not_installed(monkeypatch):
    import sys

    for name in ("routing_transformer", "routing_transformer.routing_transformer"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ModuleNotFoundError
    r = models.run_cell("routing", "routing-transformer", n=128, E=16, H=2, depth=1, mode="fwd+bwd", repeats=1)
    assert list(r) == ["skip"] and r["skip"].startswith("routing-transformer not installed (routing_transformer")


def test_keys_per_query_counts_the_layers_graph():
    from graphattn.nn import LSHAttention

    # chunks of 4 over 24 tokens, one round: every token attends 3 of its chunk and 4 before it
    layer = LSHAttention(16, 2, num_buckets=4, chunk=4, seed=0)
    assert models._keys_per_query(layer, torch.randn(1, 24, 16)) == 7.0
