import pytest
import torch
from torch import nn

from graphattn import rules
from graphattn.nn import (GraphAttention, LSHAttention, ReversibleSequence, RoutingAttention,
                          chunked_feed_forward)
from graphattn.nn._replay import recorded


def mlp(d, p=0.0):
    return nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(p), nn.Linear(2 * d, d))


def plain(seq: ReversibleSequence, x1, x2, f_kwargs=None, g_kwargs=None):
    """The residual computation the reversible sequence must reproduce, with ordinary autograd."""
    for f, g in seq.pairs():
        x1 = x1 + f(x2, **(f_kwargs or {}))
        x2 = x2 + g(x1, **(g_kwargs or {}))
    return x1, x2


def run(fn, seq, x1, x2, w1, w2, seed, **kw):
    """Outputs, input grads and parameter grads of ``sum(w1 * y1 + w2 * y2)`` from seed ``seed``."""
    seq.zero_grad(set_to_none=True)
    a, b = x1.detach().clone().requires_grad_(), x2.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    y1, y2 = fn(seq, a, b, **kw)
    ((y1 * w1).sum() + (y2 * w2).sum()).backward()
    params = {n: p.grad.clone() for n, p in seq.named_parameters() if p.grad is not None}
    return (y1.detach(), y2.detach()), (a.grad, b.grad), params, torch.get_rng_state()


def assert_same(r, p, rtol=1e-10, atol=1e-12):
    (ry, rx, rp, rrng), (py, px, pp, prng) = r, p
    for a, b in zip(ry + rx, py + px):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert rp.keys() == pp.keys() and len(rp) > 0
    for name in rp:
        torch.testing.assert_close(rp[name], pp[name], rtol=rtol, atol=atol, msg=name)
    assert torch.equal(rrng, prng)  # the backward leaves the global RNG where the plain run does


def reversible(seq, x1, x2, **kw):
    return seq(x1, x2, **kw)


def test_gradients_equal_the_plain_residual_computation_linear_and_mlp():
    torch.manual_seed(0)
    d = 6
    seq = ReversibleSequence([(nn.Linear(d, d), mlp(d)), (mlp(d), nn.Linear(d, d)), (mlp(d), mlp(d))]).double()
    x1, x2 = torch.randn(5, d, dtype=torch.float64), torch.randn(5, d, dtype=torch.float64)
    w1, w2 = torch.randn_like(x1), torch.randn_like(x2)
    r = run(reversible, seq, x1, x2, w1, w2, 0)
    p = run(plain, seq, x1, x2, w1, w2, 0)
    assert_same(r, p)
    assert len(r[2]) == len(list(seq.parameters()))  # every parameter of every f and g


def test_dropout_and_graph_attention_dropout_replay_their_masks():
    torch.manual_seed(1)
    d, n = 8, 24
    g = rules.band(n, radius=2) | rules.global_tokens(n, global_indices=[0])
    blocks = [(GraphAttention(d, 2, dropout=0.3), mlp(d, p=0.4)) for _ in range(3)]
    seq = ReversibleSequence(blocks).double()
    x1, x2 = torch.randn(2, n, d, dtype=torch.float64), torch.randn(2, n, d, dtype=torch.float64)
    w1, w2 = torch.randn_like(x1), torch.randn_like(x2)
    r = run(reversible, seq, x1, x2, w1, w2, 5, f_kwargs={"graph": g})
    p = run(plain, seq, x1, x2, w1, w2, 5, f_kwargs={"graph": g})
    assert_same(r, p)
    other = run(plain, seq, x1, x2, w1, w2, 6, f_kwargs={"graph": g})  # the masks do matter
    assert not torch.allclose(other[0][0], p[0][0])


def test_lsh_with_fresh_training_rotations_inside_reversible_blocks():
    torch.manual_seed(2)
    d, n = 8, 30
    blocks = [(LSHAttention(d, 2, num_buckets=4, chunk=4, dropout=0.2), mlp(d, p=0.2)) for _ in range(2)]
    blocks.append((LSHAttention(d, 2, num_buckets=4, num_hashes=2, causal=True), mlp(d)))
    seq = ReversibleSequence(blocks).double()
    x1, x2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    w1, w2 = torch.randn_like(x1), torch.randn_like(x2)
    assert_same(run(reversible, seq, x1, x2, w1, w2, 3), run(plain, seq, x1, x2, w1, w2, 3))


def test_routing_inside_reversible_blocks_updates_centroids_once():
    torch.manual_seed(3)
    d, n = 8, 20
    make = lambda: ReversibleSequence([(RoutingAttention(d, 2, num_clusters=3, ema_decay=0.5, seed=s), mlp(d))
                                       for s in range(2)]).double()  # noqa: E731
    rev, ref = make(), make()
    ref.load_state_dict(rev.state_dict())
    x1, x2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    w1, w2 = torch.randn_like(x1), torch.randn_like(x2)
    for step in range(2):  # step 0 also seeds the centroids (k-means++ on the first batch)
        r = run(reversible, rev, x1 + step, x2, w1, w2, 4)
        p = run(plain, ref, x1 + step, x2, w1, w2, 4)
        assert_same(r, p)
        for a, b in zip(rev.buffers(), ref.buffers()):
            assert torch.equal(a, b)


def test_autograd_grad_returns_parameter_gradients():
    torch.manual_seed(4)
    seq = ReversibleSequence([(nn.Linear(4, 4), nn.Linear(4, 4))]).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y1, y2 = seq(x, x * 2)
    params = list(seq.parameters())
    grads = torch.autograd.grad((y1 * y2).sum(), [x, *params])
    p1, p2 = plain(seq, x, x * 2)
    expected = torch.autograd.grad((p1 * p2).sum(), [x, *params])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y1, y2 = fn()
    return total[0], (y1, y2)


def test_saved_activations_do_not_grow_with_depth():
    torch.manual_seed(5)
    d = 16
    x1, x2 = torch.randn(64, d, requires_grad=True), torch.randn(64, d)
    sizes_rev, sizes_plain = [], []
    for depth in (2, 8):
        seq = ReversibleSequence([(mlp(d), mlp(d)) for _ in range(depth)])
        sizes_rev.append(saved_bytes(lambda: seq(x1, x2))[0])
        sizes_plain.append(saved_bytes(lambda: plain(seq, x1, x2))[0])
    assert sizes_rev[0] == sizes_rev[1] == 2 * 64 * d * 4  # just the two output streams
    assert sizes_plain[1] > 3.5 * sizes_plain[0]


def test_no_grad_and_empty_sequences_run_plainly():
    torch.manual_seed(6)
    seq = ReversibleSequence([(mlp(4), mlp(4)) for _ in range(3)])
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        out = seq(x1, x2)
        ref = plain(seq, x1, x2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    empty = ReversibleSequence([])
    assert empty(x1, x2)[0] is x1


def test_recorded_decisions_are_read_back_in_the_recomputation():
    calls = []

    class Decider(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            pick = recorded(lambda: calls.append(1) or int(x.sum() > 0))
            return self.lin(x) * (1.0 if pick else -1.0)

    seq = ReversibleSequence([(Decider(), Decider())])
    x = torch.randn(2, 3, requires_grad=True)
    y1, y2 = seq(x, x.detach())
    assert len(calls) == 2
    (y1.sum() + y2.sum()).backward()
    assert len(calls) == 2  # the backward read the forward's decisions instead of recomputing them


def test_bad_arguments_name_the_parameter():
    with pytest.raises(TypeError, match="blocks"):
        ReversibleSequence(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"blocks\[0\]"):
        ReversibleSequence([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match=r"blocks\[0\] g"):
        ReversibleSequence([(nn.Linear(2, 2), lambda t: t)])
    seq = ReversibleSequence([(nn.Linear(2, 2), nn.Linear(2, 2))])
    with pytest.raises(ValueError, match="one shape"):
        seq(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="f_kwargs"):
        seq(torch.randn(3, 2), torch.randn(3, 2), f_kwargs={"w": torch.ones(1, requires_grad=True)})


# ---------------------------------------------------------------- chunked feed-forward
@pytest.mark.parametrize("chunks,dim", [(1, -2), (3, -2), (7, 1), (50, -2), (2, 0)])
def test_chunked_feed_forward_equals_the_whole_application(chunks, dim):
    torch.manual_seed(7)
    ff = mlp(6).double()
    x = torch.randn(4, 11, 6, dtype=torch.float64, requires_grad=True)
    out = chunked_feed_forward(ff, x, chunks=chunks, dim=dim)
    w = torch.randn_like(out)
    gx, *gp = torch.autograd.grad((out * w).sum(), [x, *ff.parameters()])
    ref = ff(x)
    rx, *rp = torch.autograd.grad((ref * w).sum(), [x, *ff.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-14)
    for a, b in zip([gx, *gp], [rx, *rp]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_chunked_feed_forward_checkpoint_replays_dropout():
    torch.manual_seed(8)
    ff = mlp(6, p=0.5).double()
    x = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for ckpt in (True, False):
        torch.manual_seed(0)
        out = chunked_feed_forward(ff, x, chunks=3, checkpoint_chunks=ckpt)
        results.append((out, torch.autograd.grad(out.pow(2).sum(), [x, *ff.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_chunked_feed_forward_saves_only_chunk_inputs():
    torch.manual_seed(9)
    ff = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(256, 8, requires_grad=True)
    whole, _ = saved_bytes(lambda: (ff(x), x))
    chunked, _ = saved_bytes(lambda: (chunked_feed_forward(ff, x, chunks=8), x))
    assert chunked < whole / 4  # the [256, 64] hidden activations are not kept


def test_chunked_feed_forward_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="chunks"):
        chunked_feed_forward(nn.Identity(), x, chunks=0)
    with pytest.raises(TypeError, match="chunks"):
        chunked_feed_forward(nn.Identity(), x, chunks=2.0)
    with pytest.raises(ValueError, match="dim"):
        chunked_feed_forward(nn.Identity(), x, chunks=2, dim=2)
    with pytest.raises(TypeError, match="ff"):
        chunked_feed_forward(3, x, chunks=2)
