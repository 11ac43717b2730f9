"""The benchmark peers compute the attention they are timed as (against graphattn's engine in
float64 on the same graph), and the registry is the one place both benchmarks read."""

import pytest
import torch

from graphattn.bench import peers
from graphattn.bench.cases import PATTERNS, pattern_graph
from graphattn.nn import graph_attention

N, H, D = 512, 2, 16


def _qkv():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(N, H, D, generator=gen, dtype=torch.float64) for _ in range(3)]


# HF layers project their hidden states (they are not attention over given q, k, v): not here.
EXACT = [(name, pattern) for name in peers.names() if not name.startswith("hf_")
         for pattern in sorted(set().union(*peers.get(name).patterns.values()))]


@pytest.mark.parametrize("name,pattern", EXACT)
def test_peer_computes_the_graph_attention(name, pattern):
    if name == "flex" and pattern == "band":
        pytest.skip("the compiled band peer: its BlockMask is checked below, its values by the GPU benchmark")
    q, k, v = _qkv()
    g = pattern_graph(pattern, N)
    fn = peers.get(name).build(g, pattern, N, H, D, "cpu")
    if name == "sparse_csr":  # torch.sparse CSR has no float64 sampled_addmm on every build: fp32
        q, k, v = (t.float() for t in (q, k, v))
    out = fn(q, k, v)
    ref = graph_attention(q.double(), k.double(), v.double(), g)
    tol = 1e-12 if out.dtype == torch.float64 else 1e-5
    assert out.shape == ref.shape
    assert torch.allclose(out.double(), ref, atol=tol, rtol=0), float((out.double() - ref).abs().max())


@pytest.mark.parametrize("n,radius,block", [(300, 40, 32), (256, 128, 128), (97, 5, 16)])
def test_band_block_mask_marks_the_band(n, radius, block):
    # Block level: a (query block, key block) is listed iff some pair in it lies in the band, and
    # listed as full iff every pair does (checked densely against the band's definition).
    mask = peers.band_block_mask(n, radius, "cpu", block)
    nb = -(-n // block)
    i = torch.arange(nb * block)
    pair = ((i[:, None] - i[None, :]).abs() <= radius) & (i[:, None] < n) & (i[None, :] < n)
    blocks = pair.view(nb, block, nb, block)
    listed = mask.to_dense()[0, 0, :nb, :nb].bool()
    assert torch.equal(listed, blocks.any(3).any(1))
    full = torch.zeros(nb, nb, dtype=torch.bool)
    counts, idx = mask.full_kv_num_blocks[0, 0], mask.full_kv_indices[0, 0]
    for row in range(nb):
        full[row, idx[row, : counts[row]].long()] = True
    assert torch.equal(full, blocks.all(3).all(1))


def test_registry_rejects_bad_peers():
    with pytest.raises(ValueError, match="expected a peer in"):
        peers.get("nope")
    with pytest.raises(TypeError, match="expected a Peer"):
        peers.register("dense_sdpa")
    with pytest.raises(ValueError, match="registered already"):
        peers.register(peers.get("dense_sdpa"))
    assert set(peers.names("cuda")) <= set(peers.names()) and "blocked" not in peers.names("cuda")
    for name in peers.names():
        assert set(peers.get(name).patterns) <= {"cpu", "cuda"}
        assert all(set(p) <= set(PATTERNS) for p in peers.get(name).patterns.values())
