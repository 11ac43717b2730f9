import pytest
import torch
from tests.models.model_helpers import dependency, reachability
from tests.nn.reference import dense_attention, dense_bias

from graphattn import rules
from graphattn.models import (MixedAttention, SparseEncoder, bigbird_encoder, bigbird_etc_encoder, commitment_loss,
                              etc_encoder, longformer_encoder, reformer_encoder, routing_encoder)
from graphattn.nn.lsh import LSHAttention
from graphattn.nn.routing import RoutingAttention


def _token_reach(enc: SparseEncoder, n: int) -> torch.Tensor:
    """Reachability through the encoder's own per-layer graphs, restricted to the tokens."""
    masks = [enc.graph(l, n).to_dense() for l in range(enc.num_layers)]
    return reachability(masks)[:n, :n]


def test_longformer_schedule_and_receptive_field():
    torch.manual_seed(0)
    enc = longformer_encoder(8, 2, 4, radius=1, global_indices=[5]).double()
    n = 40
    assert [enc.graph(l, n).equals(rules.longformer(n, radius=1, dilation=d, global_indices=[5]))
            for l, d in enumerate([1, 1, 2, 2])] == [True] * 4
    assert enc.graph(0, n) is enc.graph(1, n)  # one graph per distinct dilation
    x = torch.randn(n, 8, dtype=torch.float64)
    assert torch.equal(dependency(enc, x), _token_reach(enc, n))


def test_longformer_per_head_dilation():
    torch.manual_seed(1)
    enc = longformer_encoder(8, 2, 2, radius=1, dilations=[1, (1, 3)]).double()
    g = enc.graph(1, 20)
    assert g.num_heads == 2
    x = torch.randn(20, 8, dtype=torch.float64)
    assert torch.equal(dependency(enc, x), _token_reach(enc, 20))


def test_bigbird_layers_have_their_own_random_blocks_and_are_reproducible():
    torch.manual_seed(2)
    a = bigbird_encoder(8, 2, 2, block_size=4, num_random_blocks=1, seed=3).double()
    b = bigbird_encoder(8, 2, 2, block_size=4, num_random_blocks=1, seed=3)
    n = 64
    assert a.graph(0, n).equals(rules.bigbird(n, block_size=4, num_random_blocks=1, seed=3))
    assert a.graph(1, n).equals(rules.bigbird(n, block_size=4, num_random_blocks=1, seed=4))
    assert not a.graph(0, n).equals(a.graph(1, n))
    assert all(a.graph(l, n).equals(b.graph(l, n)) for l in range(2))
    x = torch.randn(n, 8, dtype=torch.float64)
    assert torch.equal(dependency(a, x), _token_reach(a, n))


def test_bigbird_etc_global_nodes_connect_everything_in_two_layers():
    torch.manual_seed(3)
    enc = bigbird_etc_encoder(8, 2, 2, block_size=4, num_random_blocks=1, num_global=2, seed=0).double()
    n = 48
    assert enc.graph(0, n).num_nodes == n + 2
    x = torch.randn(n, 8, dtype=torch.float64)
    dep = dependency(enc, x)
    assert torch.equal(dep, _token_reach(enc, n)) and bool(dep.all())
    one = bigbird_etc_encoder(8, 2, 1, block_size=4, num_random_blocks=1, num_global=2, seed=0).double()
    assert not bool(dependency(one, x).all())


def test_etc_encoder_equals_dense_computation_with_relative_bias():
    """One ETC layer against float64 dense attention with the relative bias written out."""
    torch.manual_seed(4)
    n, g, r = 14, 2, 2
    enc = etc_encoder(8, 2, 1, radius=r, num_global=g, segments=[6, 8]).double()
    layer = enc.layers[0]
    torch.nn.init.normal_(layer.attn.relative_bias.weight)
    assert layer.attn.num_relative == 2 * r + 2
    x = torch.randn(n, 8, dtype=torch.float64)
    out, glob = enc(x, return_global=True)

    graph = rules.etc(n, num_global=g, radius=r, segments=[6, 8])
    assert enc.graph(0, n).equals(graph)
    xa = torch.cat([x, enc.global_embeddings])
    h = layer.norm1(xa)
    a = layer.attn
    q, k, v = (p(h).view(n + g, 2, 4) for p in (a.q_proj, a.k_proj, a.v_proj))
    # relative id of each edge: clip(j - i, -r, r) + r between tokens or between globals, 2r+1 across
    key, query = graph.edge_index
    is_tok = torch.arange(n + g) < n
    pos = torch.where(is_tok, torch.arange(n + g), torch.arange(n + g) - n)
    rel = (pos[key] - pos[query]).clamp(-r, r) + r
    rel = torch.where(is_tok[key] == is_tok[query], rel, 2 * r + 1)
    bias = a.relative_bias.weight[rel]  # [E, H]
    att, _ = dense_attention(q, k, v, graph.to_dense(), dense_bias(graph.edge_index, bias, n + g, n + g))
    x1 = xa + a.out_proj(att.reshape(n + g, 8))
    ref = enc.norm(x1 + layer.ff(layer.norm2(x1)))
    torch.testing.assert_close(out, ref[:n], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(glob, ref[n:], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="expected segments to sum to n = 10"):
        enc(torch.randn(10, 8, dtype=torch.float64))


def test_reformer_configuration():
    torch.manual_seed(5)
    enc = reformer_encoder(16, 2, 3, num_buckets=4, chunk=4, chunked_ff=2, seed=0)
    assert enc.reversible and all(isinstance(layer.attn, LSHAttention) for layer in enc.layers)
    assert all(layer.chunked_ff == 2 for layer in enc.layers)
    x = torch.randn(2, 20, 16)
    out = enc(x)
    assert out.shape == (2, 20, 16)
    torch.testing.assert_close(enc(x), out)  # fixed rotations: deterministic in training mode too
    again = reformer_encoder(16, 2, 3, num_buckets=4, chunk=4, chunked_ff=2, seed=0)
    again.load_state_dict(enc.state_dict())
    torch.testing.assert_close(again(x), out)


def test_reformer_reversible_gradients_equal_manual_computation():
    torch.manual_seed(6)
    enc = reformer_encoder(8, 2, 2, num_buckets=4, num_hashes=2, seed=1).double()
    x = torch.randn(18, 8, dtype=torch.float64, requires_grad=True)
    out = enc(x)
    out.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    s1 = s2 = x2
    for layer in enc.layers:
        s1 = s1 + layer.attention_block(s2, None)
        s2 = s2 + layer.ff_block(s1)
    ref = enc.norm((s1 + s2) / 2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-8, atol=1e-10)
    for n, p in enc.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-8, atol=1e-10, msg=n)


@pytest.mark.parametrize("chunk", [None, 4])
def test_causal_reformer_is_causal_by_gradients(chunk):
    torch.manual_seed(7)
    enc = reformer_encoder(8, 2, 2, num_buckets=4, chunk=chunk, causal=True, seed=2).double()
    dep = dependency(enc, torch.randn(16, 8, dtype=torch.float64))
    assert not bool(torch.triu(dep, diagonal=1).any())
    assert bool(dep.diagonal().all())


def test_routing_configuration_mixes_local_and_routing_heads():
    torch.manual_seed(8)
    enc = routing_encoder(16, 4, 2, num_clusters=3, radius=1, seed=0)
    attn = enc.layers[0].attn
    assert isinstance(attn, MixedAttention) and attn.local.num_heads == 2 and attn.routing.num_heads == 2
    assert enc.graph(0, 20).equals(rules.band(20, radius=1))
    x = torch.randn(2, 20, 16)
    out = enc.train()(x)
    assert out.shape == (2, 20, 16)
    loss = commitment_loss(enc)
    assert loss is not None and loss.requires_grad and float(loss.detach()) >= 0
    (out.pow(2).mean() + loss).backward()
    assert enc.layers[0].attn.routing.q_proj.weight.grad is not None
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    assert commitment_loss(enc) is None


def test_routing_mixed_attention_is_the_sum_of_its_branches():
    torch.manual_seed(9)
    m = MixedAttention(16, 2, local_heads=1, num_clusters=2, seed=0).eval()
    x = torch.randn(12, 16)
    g = rules.band(12, radius=2)
    torch.testing.assert_close(m(x, g), m.local(x, g) + m.routing(x))
    only_local = MixedAttention(16, 4, local_heads=4, num_clusters=2)
    assert only_local.routing is None and only_local(x, g).shape == (12, 16)
    only_routing = MixedAttention(16, 4, local_heads=0, num_clusters=2, seed=0)
    assert only_routing.local is None and isinstance(only_routing.routing, RoutingAttention)


def test_causal_routing_is_causal_by_gradients():
    torch.manual_seed(10)
    enc = routing_encoder(8, 2, 2, num_clusters=2, radius=2, causal=True, seed=0).double().eval()
    x = torch.randn(16, 8, dtype=torch.float64)
    enc(x)  # the first batch seeds the centroids
    dep = dependency(enc, x)
    assert not bool(torch.triu(dep, diagonal=1).any())
    assert bool(dep.diagonal().all())


def test_config_errors():
    with pytest.raises(ValueError, match="expected dilations to hold num_layers = 2 entries, got 1"):
        longformer_encoder(8, 2, 2, radius=1, dilations=[1])
    with pytest.raises(TypeError, match="expected dilations to be a sequence"):
        longformer_encoder(8, 2, 2, radius=1, dilations=2)
    with pytest.raises(ValueError, match="expected radius >= 0, got -1"):
        longformer_encoder(8, 2, 2, radius=-1)
    with pytest.raises(ValueError, match="expected local_heads <= 2, got 3"):
        routing_encoder(8, 2, 1, num_clusters=2, radius=1, local_heads=3)
    with pytest.raises(ValueError, match="expected embed_dim divisible by num_heads - local_heads"):
        routing_encoder(16, 4, 1, num_clusters=2, radius=1, local_heads=1)
    with pytest.raises(ValueError, match="expected num_buckets to be even"):
        reformer_encoder(8, 2, 1, num_buckets=3)
    enc = longformer_encoder(8, 2, 1, radius=1, global_indices=[30])
    with pytest.raises(ValueError, match="global_indices"):
        enc(torch.randn(10, 8))


@pytest.mark.parametrize("name", ["longformer", "longformer_per_head", "bigbird", "bigbird_etc", "etc", "reformer",
                                  "routing", "routing_causal"])
def test_every_configuration_runs_a_padded_batch_as_each_sample_alone(name):
    torch.manual_seed(12)
    make = {
        "longformer": lambda: longformer_encoder(8, 2, 2, radius=2, global_indices=[0]),
        "longformer_per_head": lambda: longformer_encoder(8, 2, 2, radius=1, dilations=[1, (1, 2)]),
        "bigbird": lambda: bigbird_encoder(8, 2, 2, block_size=3, seed=0),
        "bigbird_etc": lambda: bigbird_etc_encoder(8, 2, 2, block_size=3, num_global=2, seed=0),
        "etc": lambda: etc_encoder(8, 2, 2, radius=2, num_global=2),
        "reformer": lambda: reformer_encoder(8, 2, 2, num_buckets=4, chunk=4, seed=0),
        "routing": lambda: routing_encoder(8, 2, 2, num_clusters=2, radius=2, seed=0),
        "routing_causal": lambda: routing_encoder(8, 2, 2, num_clusters=2, radius=1, causal=True, seed=0),
    }[name]
    enc = make().double().eval()
    for m in enc.modules():
        if getattr(m, "relative_bias", None) is not None:
            torch.nn.init.normal_(m.relative_bias.weight)
    gen = torch.Generator().manual_seed(0)
    lengths = [17, 1, 30, 9, 30]  # random blocks, buckets and clusters differ per length
    x = torch.randn(len(lengths), 30, 8, generator=gen, dtype=torch.float64)
    mask = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    mask[3] = mask[3].flip(0)  # left padding
    out, glob = enc(x, attention_mask=mask, return_global=True)
    for b in range(len(lengths)):
        o, g = enc(x[b][mask[b]], return_global=True)
        torch.testing.assert_close(out[b][mask[b]], o, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(glob[b], g, rtol=1e-9, atol=1e-9)
    assert bool((out[~mask] == 0).all())


def test_routing_commitment_loss_of_a_padded_batch_is_the_token_weighted_mean():
    torch.manual_seed(13)
    enc = routing_encoder(8, 2, 1, num_clusters=2, radius=1, ema_decay=1.0, seed=0).double()  # fixed centroids
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    enc.eval()
    enc(x, attention_mask=mask)  # seed the centroids
    enc.train()
    enc(x, attention_mask=mask)
    loss = commitment_loss(enc)
    enc(x[[0, 2]][:, :4])
    short = commitment_loss(enc)
    enc(x[1:2])
    long = commitment_loss(enc)
    torch.testing.assert_close(loss, short * (8 / 14) + long * (6 / 14), rtol=1e-12, atol=1e-14)
