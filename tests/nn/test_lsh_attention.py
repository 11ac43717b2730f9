import pytest
import torch
from tests.nn.reference import dense_attention, head_graph, influence_matrix

from graphattn import AttentionGraph, EdgeLabel, rules
from graphattn.nn import LSHAttention


def dense_reference(layer: LSHAttention, x: torch.Tensor, graph: AttentionGraph) -> torch.Tensor:
    """Plain dense masked softmax in float64: keys = unit shared-QK vectors, scale 1."""
    H, D = layer.num_heads, layer.head_dim
    q = layer.qk_proj(x).view(-1, H, D)
    k = q / q.norm(dim=-1, keepdim=True)
    v = layer.v_proj(x).view(-1, H, D)
    mask = torch.stack([head_graph(graph, h).to_dense() for h in range(H)])
    out, _ = dense_attention(q, k, v, mask, scale=1.0)
    return layer.out_proj(out.reshape(-1, H * D))


@pytest.mark.parametrize("chunk,num_hashes,causal", [(None, 1, False), (None, 2, True), (4, 1, False),
                                                     (4, 1, True), (1, 1, True), (4, 3, True), (5, 2, False),
                                                     (64, 1, False), (64, 1, True)])
def test_matches_dense_reference_values_and_gradients(chunk, num_hashes, causal):
    torch.manual_seed(0)
    layer = LSHAttention(16, 2, num_buckets=4, num_hashes=num_hashes, chunk=chunk, causal=causal, seed=3).double()
    x = torch.randn(3, 23, 16, dtype=torch.float64, requires_grad=True)  # 23: not a multiple of any chunk
    out, graphs = layer(x, return_graph=True)
    assert len(graphs) == 3 and out.shape == x.shape
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    ref = torch.stack([dense_reference(layer, x[b], graphs[b]) for b in range(3)])
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("chunk,num_hashes", [(None, 1), (None, 3), (3, 1), (4, 2), (20, 1)])
def test_graph_is_rules_lsh_of_each_heads_shared_qk_vectors(chunk, num_hashes):
    torch.manual_seed(1)
    layer = LSHAttention(12, 3, num_buckets=6, num_hashes=num_hashes, chunk=chunk, seed=11)
    x = torch.randn(2, 17, 12)
    _, graphs = layer(x, return_graph=True)
    q = layer.qk_proj(x).view(2, 17, 3, 4).detach()
    for b in range(2):
        for h in range(3):
            expected = rules.lsh(q[b, :, h], num_buckets=6, num_hashes=num_hashes, chunk=chunk,
                                 seed=int(layer.hash_seeds[h]))
            got = head_graph(graphs[b], h)
            assert got.equals(expected)
            assert bool((got.edge_label == EdgeLabel.BUCKET).all())


@pytest.mark.parametrize("chunk,num_hashes", [(None, 2), (3, 2), (3, 1)])
def test_causal_graph_keeps_past_keys_and_self_only_when_alone(chunk, num_hashes):
    torch.manual_seed(2)
    n = 20
    causal = LSHAttention(8, 2, num_buckets=4, num_hashes=num_hashes, chunk=chunk, causal=True, seed=5)
    plain = LSHAttention(8, 2, num_buckets=4, num_hashes=num_hashes, chunk=chunk, seed=5)
    plain.load_state_dict(causal.state_dict())
    x = torch.randn(n, 8)
    _, gc = causal(x, return_graph=True)
    _, gp = plain(x, return_graph=True)
    for h in range(2):
        mc, mp = head_graph(gc, h).to_dense(), head_graph(gp, h).to_dense()
        past = torch.ones(n, n, dtype=torch.bool).tril(-1)
        assert torch.equal(mc & past, mp & past)  # the same earlier keys as the full graph
        assert not bool((mc & ~torch.ones(n, n, dtype=torch.bool).tril()).any())  # no future key
        has_past = (mc & past).any(1)
        assert torch.equal(mc.diagonal(), ~has_past)  # itself exactly when it has no other key
        assert bool(mc.diagonal()[0])


@pytest.mark.parametrize("chunk,num_hashes", [(None, 2), (4, 2), (4, 1)])
def test_causality_by_gradients(chunk, num_hashes):
    torch.manual_seed(3)
    n = 14
    layer = LSHAttention(8, 2, num_buckets=4, num_hashes=num_hashes, chunk=chunk, causal=True, seed=1).double()
    x = torch.randn(n, 8, dtype=torch.float64)
    influence = influence_matrix(layer, x)
    assert bool((influence.triu(1) == 0).all())
    assert bool((influence.tril(-1) > 0).any())  # earlier tokens do reach later outputs


def test_exact_buckets_causal_outputs_ignore_the_future():
    # Exact buckets depend on i and j alone, so earlier outputs do not change when later tokens do.
    torch.manual_seed(4)
    layer = LSHAttention(8, 2, num_buckets=4, num_hashes=2, causal=True, seed=2).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    y = x.clone()
    y[10:] = torch.randn(6, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[:10], layer(y)[:10], rtol=0, atol=0)


def test_seeded_layer_is_deterministic_in_training_and_evaluation():
    torch.manual_seed(5)
    layer = LSHAttention(16, 4, num_buckets=8, chunk=4, seed=7)
    x = torch.randn(2, 40, 16)
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    layer.eval()
    assert torch.equal(layer(x), a)
    other = LSHAttention(16, 4, num_buckets=8, chunk=4, seed=8)
    other.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "hash_seeds"}, strict=False)
    assert not torch.equal(other(x), a)  # a different seed hashes differently


def test_unseeded_layer_draws_fresh_rotations_in_training_and_fixed_ones_in_evaluation():
    torch.manual_seed(6)
    layer = LSHAttention(16, 4, num_buckets=8, chunk=4)
    x = torch.randn(64, 16)
    _, g1 = layer(x, return_graph=True)
    _, g2 = layer(x, return_graph=True)
    assert not g1.equals(g2)  # 4 heads x 64 tokens rehashed into 8 buckets: never all equal
    layer.eval()
    e1, ge = layer(x, return_graph=True)
    layer.train()
    layer(x)  # training draws do not move the evaluation rotations
    layer.eval()
    e2 = layer(x)
    assert torch.equal(e1, e2)
    copy = LSHAttention(16, 4, num_buckets=8, chunk=4)
    copy.load_state_dict(layer.state_dict())  # the evaluation rotations travel with the state
    assert torch.equal(copy.eval()(x), e1)
    # the global RNG is the only source: the same global seed gives the same training graph
    torch.manual_seed(42)
    _, ga = layer.train()(x, return_graph=True)
    torch.manual_seed(42)
    _, gb = layer(x, return_graph=True)
    assert ga.equals(gb)


def test_batched_input_hashes_each_sample_like_a_single_one():
    torch.manual_seed(7)
    layer = LSHAttention(16, 2, num_buckets=4, num_hashes=2, chunk=3, seed=0)
    x = torch.randn(3, 19, 16)
    out, graphs = layer(x, return_graph=True)
    for b in range(3):
        ob, gb = layer(x[b], return_graph=True)
        torch.testing.assert_close(out[b], ob, rtol=1e-5, atol=1e-6)
        assert gb.equals(graphs[b])


def test_keys_per_query_bounds_and_no_multiple_of_chunk_demand():
    torch.manual_seed(8)
    c, rounds = 4, 2
    layer = LSHAttention(8, 2, num_buckets=4, num_hashes=rounds, chunk=c, seed=0)
    for n in (1, 2, 5, 13, 31):
        out, g = layer(torch.randn(n, 8), return_graph=True)
        assert out.shape == (n, 8) and bool(out.isfinite().all())
        for h in range(2):
            kpq = head_graph(g, h).keys_per_query()
            assert bool((kpq >= 1).all()) and bool((kpq <= min(rounds * (2 * c - 1), max(n - 1, 1))).all())


def test_matches_hugging_face_reformer_shared_qk_attention():
    # One chunk holding the whole sequence: every token attends every other one (itself only
    # when alone), which Hugging Face's LSHSelfAttention computes without hashing. This pins the
    # shared-QK convention: unit keys, score scale 1 (HF: RMS-normalised keys and 1/sqrt(d)).
    transformers = pytest.importorskip("transformers")
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention

    torch.manual_seed(9)
    E, H, n = 16, 2, 20
    for causal in (False, True):
        cfg = transformers.ReformerConfig(hidden_size=E, num_attention_heads=H, attention_head_size=E // H,
                                          num_buckets=2, num_hashes=1, lsh_attn_chunk_length=32,
                                          lsh_num_chunks_before=0, lsh_num_chunks_after=0, is_decoder=causal,
                                          lsh_attention_probs_dropout_prob=0.0)
        hf = LSHSelfAttention(cfg).double().eval()
        ours = LSHAttention(E, H, num_buckets=2, chunk=32, causal=causal, seed=0, bias=False).double().eval()
        with torch.no_grad():
            ours.qk_proj.weight.copy_(hf.query_key.weight)
            ours.v_proj.weight.copy_(hf.value.weight)
            ours.out_proj.weight.copy_(torch.eye(E, dtype=torch.float64))
        x = torch.randn(1, n, E, dtype=torch.float64)
        expected = hf(x).hidden_states
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_dropout_runs_only_in_training():
    torch.manual_seed(10)
    layer = LSHAttention(8, 2, num_buckets=4, chunk=4, seed=0, dropout=0.5)
    x = torch.randn(24, 8)
    assert not torch.equal(layer(x), layer(x))  # fresh dropout masks
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="num_buckets"):
        LSHAttention(8, 2, num_buckets=3)
    with pytest.raises(ValueError, match="num_buckets"):
        LSHAttention(8, 2, num_buckets=0)
    with pytest.raises(ValueError, match="embed_dim divisible"):
        LSHAttention(9, 2, num_buckets=4)
    with pytest.raises(ValueError, match="chunk"):
        LSHAttention(8, 2, num_buckets=4, chunk=0)
    with pytest.raises(ValueError, match="num_hashes"):
        LSHAttention(8, 2, num_buckets=4, num_hashes=0)
    with pytest.raises(TypeError, match="seed"):
        LSHAttention(8, 2, num_buckets=4, seed=1.5)
    with pytest.raises(TypeError, match="causal"):
        LSHAttention(8, 2, num_buckets=4, causal=1)
    layer = LSHAttention(8, 2, num_buckets=4)
    with pytest.raises(ValueError, match="embed_dim"):
        layer(torch.randn(5, 7))
    with pytest.raises(ValueError, match=r"\[N, E\] or \[B, N, E\]"):
        layer(torch.randn(8))
    with pytest.raises(ValueError, match="N >= 1"):
        layer(torch.randn(0, 8))


def round_pairs(buckets, chunk):
    """Plain-Python pairs (key, query), self pairs excluded, of each round of ``buckets``
    [R, n] (exact buckets, or Reformer's chunks of the (bucket, position) order)."""
    R, n = buckets.shape
    rounds = []
    for r in range(R):
        b = buckets[r].tolist()
        if chunk is None:
            pairs = {(j, i) for i in range(n) for j in range(n) if i != j and b[i] == b[j]}
        else:
            order = sorted(range(n), key=lambda t: (b[t], t))
            chunks = [order[s:s + chunk] for s in range(0, n, chunk)]
            pairs = set()
            for c, members in enumerate(chunks):
                window = set(members) | set(chunks[c - 1])  # chunks[-1]: the first looks back to the last
                pairs |= {(j, i) for i in members for j in window if j != i}
        rounds.append(pairs)
    return rounds


@pytest.mark.parametrize("chunk,num_hashes,causal", [(None, 3, False), (None, 4, True), (3, 2, False), (3, 4, True),
                                                     (1, 3, False), (5, 4, False), (8, 3, True)])
def test_rounds_merged_equal_attention_over_the_union_graph(chunk, num_hashes, causal):
    # Each round is its own attention; a pair that several rounds hold is attended once. The
    # union graph is rules.lsh's (checked against plain-Python rounds); values and gradients
    # against dense float64 attention over it.
    from graphattn.rules.hashing import lsh_buckets

    torch.manual_seed(12)
    n, H = 19, 2
    layer = LSHAttention(8, H, num_buckets=2, num_hashes=num_hashes, chunk=chunk, causal=causal, seed=4).double()
    x = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    q = layer.qk_proj(x).view(n, H, 4)
    masks = []
    for h in range(H):
        seed = int(layer.hash_seeds[h])
        union = rules.lsh(q[:, h].detach(), num_buckets=2, num_hashes=num_hashes, chunk=chunk, seed=seed).to_dense()
        rounds = round_pairs(lsh_buckets(q[:, h].detach(), num_buckets=2, num_hashes=num_hashes, seed=seed), chunk)
        pairs = set().union(*rounds)
        assert sum(map(len, rounds)) > len(pairs)  # rounds share pairs: the correction is exercised
        assert pairs == {(j, i) for i, j in torch.nonzero(union & ~torch.eye(n, dtype=torch.bool)).tolist()}
        if causal:
            union = union & torch.ones(n, n, dtype=torch.bool).tril(-1)
            alone = ~union.any(1)
            union[alone, alone] = True
        masks.append(union)
    v = layer.v_proj(x).view(n, H, 4)
    ref, _ = dense_attention(q, q / q.norm(dim=-1, keepdim=True), v, torch.stack(masks), scale=1.0)
    ref = layer.out_proj(ref.reshape(n, 8))
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_rounds_plan_once_across_training_steps(monkeypatch, causal):
    # Fresh rotations every training step, but the chunk layout over the sorted rows is the same:
    # its plan is built once.
    from collections import OrderedDict

    from graphattn.nn import _routed, plan

    monkeypatch.setattr(_routed, "_LAYOUTS", OrderedDict())
    builds = []
    real = plan._build_plan
    monkeypatch.setattr(plan, "_build_plan", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    torch.manual_seed(13)
    layer = LSHAttention(16, 2, num_buckets=4, num_hashes=3, chunk=5, causal=causal)
    for _ in range(3):
        layer(torch.randn(2, 33, 16)).sum().backward()
    assert len(builds) == 1


def test_dropout_reaches_a_keyless_tokens_self_loop():
    # Causal: token 0 has no earlier key and attends itself alone; its one attention probability
    # is dropped (output 0) or kept and scaled (output 2 v for p = 0.5), like every other edge.
    torch.manual_seed(14)
    layer = LSHAttention(8, 2, num_buckets=4, chunk=4, causal=True, seed=0, dropout=0.5, bias=False)
    with torch.no_grad():
        layer.out_proj.weight.copy_(torch.eye(8))
    x = torch.randn(12, 8)
    v0 = layer.v_proj(x[0]).view(2, 4)
    seen = set()
    for _ in range(20):
        out0 = layer(x)[0].view(2, 4)
        for h in range(2):
            if torch.equal(out0[h], torch.zeros(4)):
                seen.add("dropped")
            else:
                torch.testing.assert_close(out0[h], 2 * v0[h])
                seen.add("kept")
    assert seen == {"dropped", "kept"}
