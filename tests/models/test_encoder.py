import math

import pytest
import torch
from tests.models.model_helpers import band_mask, dependency, reachability
from tests.nn.reference import dense_attention

from graphattn import AttentionGraph, rules
from graphattn.models import FeedForward, GraphRule, SparseEncoder, SparseEncoderLayer


def _grad_fns(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return {type(f).__name__ for f in seen}


def test_two_band_layers_receptive_field_is_exactly_plus_minus_three():
    torch.manual_seed(0)
    enc = SparseEncoder(8, 2, graphs=[GraphRule(rules.band, radius=1), GraphRule(rules.band, radius=2)]).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    dep = dependency(enc, x)
    assert torch.equal(dep, band_mask(16, -3, 3))
    # one layer: exactly its own band
    one = SparseEncoder(8, 2, graphs=GraphRule(rules.band, radius=1), num_layers=1).double()
    assert torch.equal(dependency(one, x), band_mask(16, -1, 1))


def test_per_layer_schedule_matches_graph_reachability():
    torch.manual_seed(1)
    graphs = [rules.band(20, radius=1), rules.dilated(20, radius=1, dilation=4), rules.global_tokens(20, global_indices=[7])]
    enc = SparseEncoder(8, 2, graphs=graphs).double()
    x = torch.randn(20, 8, dtype=torch.float64)
    assert torch.equal(dependency(enc, x), reachability([g.to_dense() for g in graphs]))


def test_causal_band_layers_are_causal_by_gradients():
    torch.manual_seed(2)
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.band, radius=2, causal=True), num_layers=2).double()
    dep = dependency(enc, torch.randn(14, 8, dtype=torch.float64))
    assert torch.equal(dep, band_mask(14, -4, 0))  # j <= i, and exactly the 2-layer causal window


def test_layer_matches_dense_reference():
    """Pre-norm layer against a float64 dense masked-softmax computation written out by hand."""
    torch.manual_seed(3)
    g = rules.band(12, radius=2) | rules.global_tokens(12, global_indices=[0])
    layer = SparseEncoderLayer(8, 2, ff_dim=16).double()
    x = torch.randn(12, 8, dtype=torch.float64)
    a = layer.attn
    h = layer.norm1(x)
    q, k, v = (p(h).view(12, 2, 4) for p in (a.q_proj, a.k_proj, a.v_proj))
    att, _ = dense_attention(q, k, v, g.to_dense())
    x1 = x + a.out_proj(att.reshape(12, 8))
    h2 = layer.norm2(x1)
    ref = x1 + layer.ff.lin2(torch.nn.functional.gelu(layer.ff.lin1(h2)))
    torch.testing.assert_close(layer(x, g), ref, rtol=1e-12, atol=1e-12)


def test_batched_equals_per_sample_and_graph_cache():
    torch.manual_seed(4)
    calls = []

    def make(n):
        calls.append(n)
        return rules.band(n, radius=1) | rules.global_tokens(n, global_indices=[0])

    enc = SparseEncoder(8, 2, graphs=make, num_layers=3)
    x = torch.randn(3, 10, 8)
    out = enc(x)
    for b in range(3):
        torch.testing.assert_close(out[b], enc(x[b]), rtol=1e-5, atol=1e-6)
    enc(torch.randn(7, 8))
    assert calls == [10, 7]  # one build per length, shared by the three layers
    assert enc.graph(0, 10) is enc.graph(2, 10)


def test_fixed_graph_entry_and_its_length_check():
    g = rules.band(9, radius=1)
    enc = SparseEncoder(8, 2, graphs=g, num_layers=2)
    assert enc(torch.randn(9, 8)).shape == (9, 8)
    with pytest.raises(ValueError, match=r"expected graphs\[0\] over n \+ num_global = 5 \+ 0 = 5 nodes, got 9"):
        enc(torch.randn(5, 8))


def test_reversible_equals_manual_two_stream_computation_in_float64():
    """Reversible encoder (activations recomputed in backward) against the same two-stream
    function evaluated with ordinary autograd: outputs, input and parameter gradients."""
    torch.manual_seed(5)
    graphs = [GraphRule(rules.band, radius=1), GraphRule(rules.dilated, radius=1, dilation=2),
              GraphRule(rules.band, radius=3)]
    enc = SparseEncoder(8, 2, graphs=graphs, reversible=True, ff_dim=16).double()
    x = torch.randn(2, 15, 8, dtype=torch.float64, requires_grad=True)
    out = enc(x)
    assert "_ReversibleFunctionBackward" in _grad_fns(out)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    gx = x.grad.clone()

    enc.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    s1 = s2 = x2
    for l, layer in enumerate(enc.layers):
        g = enc.graph(l, 15)
        s1 = s1 + layer.attention_block(s2, g)
        s2 = s2 + layer.ff_block(s1)
    ref = enc.norm((s1 + s2) / 2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    (ref * w).sum().backward()
    torch.testing.assert_close(gx, x2.grad, rtol=1e-9, atol=1e-10)
    for n, p in enc.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-10, msg=n)


def test_reversible_with_dropout_replays_the_masks():
    torch.manual_seed(6)
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.band, radius=1), num_layers=2, reversible=True,
                        dropout=0.3).double().train()
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        out = enc(x)
        out.pow(2).sum().backward()
    gx = x.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        s1 = s2 = x2
        for l, layer in enumerate(enc.layers):
            s1 = s1 + layer.attention_block(s2, enc.graph(l, 12))
            s2 = s2 + layer.ff_block(s1)
        ref = enc.norm((s1 + s2) / 2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(gx, x2.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("reversible", [False, True])
def test_chunked_ff_is_identical(reversible):
    torch.manual_seed(7)
    kw = dict(graphs=GraphRule(rules.band, radius=2), num_layers=2, reversible=reversible)
    plain = SparseEncoder(8, 2, **kw).double()
    chunked = SparseEncoder(8, 2, chunked_ff=3, **kw).double()
    chunked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = plain(xa), chunked(xb)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(plain.named_parameters(), chunked.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_global_nodes_are_appended_and_dropped():
    torch.manual_seed(8)
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.global_nodes, num_global=2), num_layers=1, num_global=2).double()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    out, glob = enc(x, return_global=True)
    assert out.shape == (3, 10, 8) and glob.shape == (3, 2, 8)
    torch.testing.assert_close(enc(x), out)
    # every token reaches every token through the global nodes in two layers, none in one
    dep = dependency(lambda t: enc(t), x[0])
    assert torch.equal(dep, torch.eye(10, dtype=torch.bool))  # global_nodes has no token-token edges but self
    two = SparseEncoder(8, 2, graphs=GraphRule(rules.global_nodes, num_global=2), num_layers=2, num_global=2).double()
    assert bool(dependency(two, x[0]).all())
    assert enc.global_embeddings.shape == (2, 8)


def test_feed_forward_shapes_and_default_width():
    ff = FeedForward(6)
    assert ff.ff_dim == 24 and ff(torch.randn(2, 3, 6)).shape == (2, 3, 6)


def test_errors():
    band = GraphRule(rules.band, radius=1)
    with pytest.raises(ValueError, match="expected num_layers when graphs is a single"):
        SparseEncoder(8, 2, graphs=band)
    with pytest.raises(ValueError, match=r"expected num_layers = len\(graphs\) = 2, got 3"):
        SparseEncoder(8, 2, graphs=[band, band], num_layers=3)
    with pytest.raises(TypeError, match=r"expected graphs\[1\] to be an AttentionGraph"):
        SparseEncoder(8, 2, graphs=[band, 3])
    with pytest.raises(TypeError, match="expected graphs to be an AttentionGraph"):
        SparseEncoder(8, 2, graphs=3)
    with pytest.raises(ValueError, match=r"expected graphs to hold at least one"):
        SparseEncoder(8, 2, graphs=[])
    with pytest.raises(ValueError, match=r"expected graphs\[0\] \(None means a content-based attention\)"):
        SparseEncoder(8, 2, graphs=[None])
    with pytest.raises(ValueError, match="expected attentions to hold num_layers = 2 entries, got 1"):
        SparseEncoder(8, 2, graphs=[band, band], attentions=[None])
    with pytest.raises(ValueError, match="expected embed_dim divisible by num_heads"):
        SparseEncoder(8, 3, graphs=band, num_layers=1)
    with pytest.raises(ValueError, match="expected num_global >= 0, got -1"):
        SparseEncoder(8, 2, graphs=band, num_layers=1, num_global=-1)
    with pytest.raises(TypeError, match="expected reversible to be a bool"):
        SparseEncoder(8, 2, graphs=band, num_layers=1, reversible=1)
    with pytest.raises(ValueError, match="expected chunked_ff >= 1, got 0"):
        SparseEncoder(8, 2, graphs=band, num_layers=1, chunked_ff=0)
    enc = SparseEncoder(8, 2, graphs=band, num_layers=1)
    with pytest.raises(ValueError, match=r"expected x of shape \[N, E\] or \[B, N, E\], got \[8\]"):
        enc(torch.randn(8))
    with pytest.raises(ValueError, match="expected x with last dim embed_dim = 8, got 4"):
        enc(torch.randn(3, 4))
    bad = SparseEncoder(8, 2, graphs=lambda n: "band", num_layers=1)
    with pytest.raises(TypeError, match=r"expected graphs\[0\]\(5\) to return an AttentionGraph, got str"):
        bad(torch.randn(5, 8))
    with pytest.raises(TypeError, match="expected rule to be callable"):
        GraphRule(3)
    assert isinstance(enc.graph(0, 4), AttentionGraph)


def _ragged_batch(lengths, width, E=8, seed=0):
    """Float64 inputs [B, width, E] and a mask whose real positions are scattered in each row."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), width, E, generator=gen, dtype=torch.float64)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, torch.randperm(width, generator=gen)[:n]] = True
    return x, mask


def test_padded_batch_equals_each_sample_alone_and_builds_each_graph_once():
    torch.manual_seed(9)
    calls = []

    def make(n):
        calls.append(n)
        return rules.band(n, radius=2) | rules.global_tokens(n, global_indices=[0])

    enc = SparseEncoder(8, 2, graphs=make, num_layers=3).double()
    x, mask = _ragged_batch([5, 12, 1, 12], 12)
    out = enc(x, attention_mask=mask.long())  # 0/1 integers, as tokenizers return them
    for b in range(4):
        torch.testing.assert_close(out[b][mask[b]], enc(x[b][mask[b]]), rtol=1e-9, atol=1e-9)
    assert bool((out[~mask] == 0).all())
    assert sorted(set(calls)) == [1, 5, 12]
    # one union graph for the batch, cached per tuple of lengths
    g, ptr = enc.batched_graph(0, [5, 12, 1, 12])
    assert enc.batched_graph(2, [5, 12, 1, 12])[0] is g and ptr.tolist() == [0, 5, 17, 18, 30]
    # padded entries never reach a real output, and get no gradient
    noisy = torch.where(mask[..., None], x, torch.randn_like(x) * 100)
    torch.testing.assert_close(enc(noisy, attention_mask=mask), out, rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    enc(xg, attention_mask=mask).pow(2).sum().backward()
    assert bool((xg.grad[~mask] == 0).all()) and bool((xg.grad[mask] != 0).any())


def test_padded_batch_of_one_length_uses_the_shared_graph():
    torch.manual_seed(10)
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.band, radius=1), num_layers=2, num_global=0).double()
    x, mask = _ragged_batch([6, 6, 6], 9)
    out = enc(x, attention_mask=mask)
    ref = enc(x[mask].view(3, 6, 8))
    torch.testing.assert_close(out[mask].view(3, 6, 8), ref, rtol=0, atol=0)
    assert enc(x[0], attention_mask=mask[0]).shape == (9, 8)  # unbatched input with a [N] mask


def test_padded_batch_with_global_nodes_and_reversible_layers():
    torch.manual_seed(11)
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.etc, num_global=2, radius=1), num_layers=2, num_global=2,
                        num_relative=4, reversible=True, chunked_ff=2).double()
    for layer in enc.layers:
        torch.nn.init.normal_(layer.attn.relative_bias.weight)
    x, mask = _ragged_batch([7, 3, 10], 10)
    out, glob = enc(x, attention_mask=mask, return_global=True)
    assert glob.shape == (3, 2, 8)
    for b in range(3):
        o, g = enc(x[b][mask[b]], return_global=True)
        torch.testing.assert_close(out[b][mask[b]], o, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(glob[b], g, rtol=1e-9, atol=1e-9)


def test_padded_batch_errors():
    enc = SparseEncoder(8, 2, graphs=GraphRule(rules.band, radius=1), num_layers=1)
    with pytest.raises(ValueError, match=r"expected attention_mask of shape \[2, 5\], got \[2, 4\]"):
        enc(torch.randn(2, 5, 8), attention_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="sample 1 keeps none"):
        enc(torch.randn(2, 5, 8), attention_mask=torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))


def test_sinusoidal_positions_formula_and_offsets_as_rotations():
    from graphattn.models import SinusoidalPositions
    pe = SinusoidalPositions(50, 6)
    p, i = 7, 1
    w = 10000.0 ** (-2 * i / 6)
    c = (2 / 6) ** 0.5
    assert torch.allclose(pe(torch.tensor(p))[2 * i:2 * i + 2],
                          torch.tensor([c * math.sin(p * w), c * math.cos(p * w)], dtype=torch.float32))
    assert torch.allclose(pe.weight.norm(dim=1), torch.ones(50))
    # PE(p + d) = R(d) PE(p) for one fixed R per offset d, at every p
    d = 3
    src, dst = pe.weight[:40].double(), pe.weight[d:40 + d].double()
    R = torch.linalg.lstsq(src, dst).solution
    torch.testing.assert_close(src @ R, dst, rtol=0, atol=1e-5)
    assert list(pe.state_dict()) == [] and not list(pe.parameters())  # fixed, not saved
    assert SinusoidalPositions(4, 5).weight.shape == (4, 5)  # odd width
