import math

import pytest
import torch
from tests.nn.reference import dense_attention, head_graph, influence_matrix

from graphattn import rules
from graphattn.nn import RoutingAttention
from graphattn.nn.lsh import head_seeds
from graphattn.rules.clustering import spherical_kmeans


def project(layer, x):
    H, D = layer.num_heads, layer.head_dim
    return (layer.q_proj(x).view(-1, H, D), layer.k_proj(x).view(-1, H, D), layer.v_proj(x).view(-1, H, D))


def reference_sets(q, k, centroids, window):
    """Balanced routing by plain Python sorting (independent of the layer's tensor code): per
    cluster, its query and key token lists."""
    n = q.shape[0]
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    sets = []
    for c in range(centroids.shape[0]):
        sq, sk = (qn @ centroids[c]).tolist(), (kn @ centroids[c]).tolist()
        sets.append((sorted(range(n), key=lambda i: (-sq[i], i))[:window],
                     sorted(range(n), key=lambda j: (-sk[j], j))[:window]))
    return sets


def reference_mask(q, k, centroids, window, causal):
    """The routing graph of :func:`reference_sets` as a dense mask (union over clusters)."""
    n = q.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for queries, keys in reference_sets(q, k, centroids, window):
        for i in queries:
            for j in keys:
                mask[i, j] = True
    if causal:
        mask &= torch.ones(n, n, dtype=torch.bool).tril()
    empty = ~mask.any(1)
    mask[empty, empty] = True
    return mask


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 3), (True, 7)])
def test_matches_dense_reference_values_gradients_and_routing(causal, window):
    torch.manual_seed(0)
    layer = RoutingAttention(16, 2, num_clusters=4, cluster_size=window, causal=causal, seed=1).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)
    layer.eval()
    out, graphs = layer(x, return_graph=True)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    H, D = 2, 8
    win = window if window is not None else math.ceil(21 / 4)
    refs = []
    for b in range(2):
        q, k, v = project(layer, x[b])
        masks = torch.stack([reference_mask(q[:, h].detach(), k[:, h].detach(), layer.centroids[h], win, causal)
                             for h in range(H)])
        for h in range(H):
            assert torch.equal(head_graph(graphs[b], h).to_dense(), masks[h])
        o, _ = dense_attention(q, k, v, masks)  # scale 1/sqrt(d)
        refs.append(layer.out_proj(o.reshape(-1, H * D)))
    ref = torch.stack(refs)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_first_batch_seeds_centroids_like_rules_kmeans():
    # One head, one sample: the layer's k-means++ initialisation and routing is rules.kmeans on
    # the projected queries and keys with the head's seed.
    torch.manual_seed(1)
    layer = RoutingAttention(8, 1, num_clusters=3, cluster_size=4, seed=9).double().eval()
    x = torch.randn(15, 8, dtype=torch.float64)
    _, g = layer(x, return_graph=True)
    q, k, _ = project(layer, x)
    seed = int(head_seeds(9, 1)[0])
    expected = rules.kmeans(q[:, 0].detach(), keys=k[:, 0].detach(), num_clusters=3, cluster_size=4, seed=seed)
    assert torch.equal(head_graph(g, 0).edge_index, expected.edge_index)
    c, _ = spherical_kmeans(torch.cat([q[:, 0], k[:, 0]]).detach(), num_clusters=3, seed=seed)
    torch.testing.assert_close(layer.centroids[0], c)


def test_evaluation_before_training_then_evaluation_freezes_and_training_moves_centroids():
    torch.manual_seed(2)
    layer = RoutingAttention(16, 2, num_clusters=3, seed=0)
    assert not bool(layer.initialized)
    layer.eval()
    x = torch.randn(2, 18, 16)
    out = layer(x)
    assert bool(layer.initialized) and bool(out.isfinite().all())
    norms = layer.centroids.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    frozen = layer.centroids.clone()
    again = layer(x)
    assert torch.equal(layer.centroids, frozen) and torch.equal(again, out)
    assert layer.last_commitment_loss is None
    layer.train()
    layer(torch.randn(2, 18, 16))
    assert not torch.equal(layer.centroids, frozen)


def test_ema_update_formula():
    torch.manual_seed(3)
    decay = 0.9
    layer = RoutingAttention(8, 2, num_clusters=3, ema_decay=decay, seed=0).double()
    x = torch.randn(12, 8, dtype=torch.float64)
    layer.eval()
    layer(x)  # initialise
    before = layer.centroids.clone()
    y = torch.randn(12, 8, dtype=torch.float64)
    layer.train()
    layer(y)
    q, k, _ = project(layer, y)
    for h in range(2):
        pts = torch.cat([q[:, h], k[:, h]]).detach()
        pts = pts / pts.norm(dim=-1, keepdim=True)
        assign = (pts @ before[h].T).argmax(1)
        for c in range(3):
            members = pts[assign == c]
            if len(members) == 0:
                expected = before[h, c]
            else:
                mean = members.sum(0) / members.sum(0).norm()
                expected = decay * before[h, c] + (1 - decay) * mean
                expected = expected / expected.norm()
            torch.testing.assert_close(layer.centroids[h, c], expected)


def test_unrouted_tokens_attend_themselves_never_zero_or_nan():
    torch.manual_seed(4)
    # window 1 and 2 clusters: at most 2 of 10 queries are routed per head, the rest are alone.
    layer = RoutingAttention(8, 2, num_clusters=2, cluster_size=1, seed=0).double().eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    out, g = layer(x, return_graph=True)
    assert bool(out.isfinite().all())
    q, k, v = project(layer, x)
    for h in range(2):
        m = head_graph(g, h).to_dense()
        assert bool(m.any(1).all())
        alone = (m.sum(1) == 1) & m.diagonal()
        assert int(alone.sum()) >= 8
    # a token that attends only itself in every head outputs its own value, projected
    ones = torch.stack([(head_graph(g, h).to_dense().sum(1) == 1) & head_graph(g, h).to_dense().diagonal()
                        for h in range(2)]).all(0)
    i = int(torch.nonzero(ones)[0])
    torch.testing.assert_close(out[i], layer.out_proj(v[i].reshape(-1)))


@pytest.mark.parametrize("window", [None, 2])
def test_causality_by_gradients(window):
    torch.manual_seed(5)
    n = 13
    layer = RoutingAttention(8, 2, num_clusters=3, cluster_size=window, causal=True, seed=0).double().eval()
    x = torch.randn(n, 8, dtype=torch.float64)
    layer(x)  # initialise, so the jacobian's forward routes with fixed centroids
    influence = influence_matrix(layer, x)
    assert bool((influence.triu(1) == 0).all())
    assert bool((influence.tril(-1) > 0).any())  # earlier tokens do reach later outputs


def test_causality_by_gradients_in_training_mode_with_commitment():
    torch.manual_seed(6)
    layer = RoutingAttention(8, 2, num_clusters=3, causal=True, seed=0).double()
    x = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    for i in range(11):
        (gx,) = torch.autograd.grad(out[i].sum(), x, retain_graph=True)
        assert bool((gx[i + 1:] == 0).all())


def test_commitment_loss_value_and_gradient():
    torch.manual_seed(7)
    layer = RoutingAttention(8, 2, num_clusters=3, commitment=0.5, seed=0).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    layer.eval()
    layer(x)
    cent = layer.centroids.clone()
    layer.train()
    layer(x)
    loss = layer.last_commitment_loss
    q, k, _ = project(layer, x.reshape(-1, 8))
    dists = []
    for t in (q, k):
        t = t / t.norm(dim=-1, keepdim=True)
        sim = torch.einsum("nhd,hcd->nhc", t, cent)
        near = cent[torch.arange(2), sim.argmax(-1)]  # [n, H, D]
        dists.append((t - near).pow(2).sum(-1).mean())
    torch.testing.assert_close(loss, 0.5 * 0.5 * (dists[0] + dists[1]))
    loss.backward()
    assert layer.q_proj.weight.grad.abs().sum() > 0 and layer.k_proj.weight.grad.abs().sum() > 0


def test_batched_equals_per_sample_in_evaluation():
    torch.manual_seed(8)
    layer = RoutingAttention(16, 2, num_clusters=3, seed=0).eval()
    x = torch.randn(3, 14, 16)
    out, graphs = layer(x, return_graph=True)
    for b in range(3):
        ob, gb = layer(x[b], return_graph=True)
        torch.testing.assert_close(out[b], ob, rtol=1e-5, atol=1e-6)
        assert gb.equals(graphs[b])


def test_state_dict_carries_centroids():
    torch.manual_seed(9)
    layer = RoutingAttention(8, 2, num_clusters=2, seed=0).eval()
    x = torch.randn(10, 8)
    out = layer(x)
    copy = RoutingAttention(8, 2, num_clusters=2, seed=123).eval()
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy(x), out)
    layer.reset_parameters()
    assert not bool(layer.initialized)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="num_clusters"):
        RoutingAttention(8, 2, num_clusters=0)
    with pytest.raises(ValueError, match="cluster_size"):
        RoutingAttention(8, 2, num_clusters=2, cluster_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        RoutingAttention(8, 2, num_clusters=2, ema_decay=1.5)
    with pytest.raises(ValueError, match="commitment"):
        RoutingAttention(8, 2, num_clusters=2, commitment=-1.0)
    with pytest.raises(TypeError, match="seed"):
        RoutingAttention(8, 2, num_clusters=2, seed="0")
    layer = RoutingAttention(8, 2, num_clusters=9)
    with pytest.raises(ValueError, match="num_clusters = 9"):
        layer(torch.randn(4, 8))  # 2 * 4 = 8 queries and keys cannot seed 9 centroids
    with pytest.raises(ValueError, match="embed_dim"):
        layer(torch.randn(4, 5))


def test_top_members_is_the_stable_sort_prefix_with_ties():
    from graphattn.nn.routing import _top_members

    torch.manual_seed(10)
    sim = torch.randint(0, 4, (3, 5, 17)).double()  # many ties
    for w in (1, 4, 9, 17):
        got = _top_members(sim, w)
        ref = torch.sort(sim, dim=-1, descending=True, stable=True).indices[..., :w].sort(-1).values
        assert torch.equal(got, ref)


def _union_reference(layer, x, causal):
    """Float64 dense attention of ``x`` [N, E] over the routing union graph built by
    ``reference_mask`` (plain Python sorting), per head; returns the projected output."""
    H, D = layer.num_heads, layer.head_dim
    q, k, v = project(layer, x)
    w = layer.cluster_size if layer.cluster_size is not None else math.ceil(x.shape[0] / layer.num_clusters)
    masks = torch.stack([reference_mask(q[:, h].detach(), k[:, h].detach(), layer.centroids[h], min(w, x.shape[0]),
                                        causal) for h in range(H)])
    o, _ = dense_attention(q, k, v, masks)
    return layer.out_proj(o.reshape(-1, H * D)), masks


@pytest.mark.parametrize("num_clusters,cluster_size,n,causal,repeat", [
    (4, 9, 19, False, False),   # 36 slots for 19 tokens: clusters overlap
    (4, 9, 19, True, False),
    (3, 10, 12, False, False),  # most pairs in two or three clusters
    (5, 4, 16, False, True),    # repeated tokens: equal similarities, ties at the cut
    (70, 30, 40, False, False),  # a cluster shares queries with over 64 earlier ones
    (70, 30, 40, True, False),
])
def test_clusters_merged_equal_attention_over_the_union_graph(num_clusters, cluster_size, n, causal, repeat):
    # Each cluster is its own partial attention; a pair several of a query's clusters hold is
    # attended once. Values and gradients against the dense union graph, in float64.
    torch.manual_seed(11)
    layer = RoutingAttention(8, 2, num_clusters=num_clusters, cluster_size=cluster_size, causal=causal,
                             seed=2).double().eval()
    x = torch.randn(n, 8, dtype=torch.float64)
    if repeat:
        x[1::2] = x[0::2]
    x.requires_grad_()
    out, g = layer(x, return_graph=True)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    x.grad = None
    ref, masks = _union_reference(layer, x, causal)
    (ref * w).sum().backward()
    # the clusters do share pairs here (so the duplicate correction is exercised)
    q, k, _ = project(layer, x)
    pairs = [(i, j) for queries, keys in reference_sets(q[:, 0].detach(), k[:, 0].detach(), layer.centroids[0],
                                                         min(cluster_size, n)) for i in queries for j in keys]
    assert len(pairs) > len(set(pairs))
    for h in range(2):
        assert torch.equal(head_graph(g, h).to_dense(), masks[h])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_duplicate_mask_is_the_first_cluster_holding_the_pair():
    from graphattn.nn.routing import _duplicate_mask

    gen = torch.Generator().manual_seed(12)
    # up to 5, 11, 29 and 79 earlier clusters sharing a query: bitsets of uint8, int16, int32
    # and two int64 words
    for K, w, n in ((6, 4, 9), (12, 3, 5), (30, 3, 5), (80, 3, 5), (3, 1, 2), (5, 5, 5)):
        q_sets = torch.stack([torch.randperm(n, generator=gen)[:w].sort().values for _ in range(K)])
        k_sets = torch.stack([torch.randperm(n, generator=gen)[:w].sort().values for _ in range(K)])
        mask = _duplicate_mask(q_sets, k_sets)
        expected = torch.zeros(K, w, w, dtype=torch.bool)
        for c in range(K):
            for p in range(w):
                for s in range(w):
                    i, j = int(q_sets[c, p]), int(k_sets[c, s])
                    expected[c, p, s] = any(i in q_sets[e].tolist() and j in k_sets[e].tolist() for e in range(c))
        if mask is None:
            assert not bool(expected.any())
        else:
            assert torch.equal(mask, expected)


def test_merge_rows_equals_merge_attention():
    from graphattn.nn import merge_attention
    from graphattn.nn._routed import merge_rows

    gen = torch.Generator().manual_seed(13)
    # target t has parts 0..count[t]-1, one row each; a keyless part has lse -inf
    count = torch.tensor([0, 1, 3, 2, 4])
    index = torch.arange(5).repeat_interleave(count)
    R, H, D = int(count.sum()), 2, 3
    outs = torch.randn(R, H, D, dtype=torch.float64, generator=gen, requires_grad=True)
    lse = torch.randn(R, H, dtype=torch.float64, generator=gen)
    lse[3, 0] = float("-inf")
    lse[6:8, 1] = float("-inf")  # target 3: keyless in head 1
    lses = lse.requires_grad_()
    out, total = merge_rows(outs, lses, index, 5)
    g_out, g_lse = torch.randn_like(out), torch.randn_like(total)
    loss = (out * g_out).sum() + (total.masked_fill(torch.isinf(total), 0) * g_lse).sum()
    grads = torch.autograd.grad(loss, (outs, lses))
    # the same parts padded to 4 aligned parts (absent ones keyless) for merge_attention
    first = torch.cumsum(count, 0) - count
    parts_o, parts_l = [], []
    for p in range(4):
        rows = first + p
        has = p < count
        rows = torch.where(has, rows, torch.zeros_like(rows))
        parts_o.append(torch.where(has[:, None, None], outs[rows], 0.0))
        parts_l.append(torch.where(has[:, None], lses[rows], float("-inf")))
    ref_out, ref_lse = merge_attention(parts_o, parts_l)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isinf(total), torch.isinf(ref_lse))
    loss = (ref_out * g_out).sum() + (ref_lse.masked_fill(torch.isinf(ref_lse), 0) * g_lse).sum()
    for a, b in zip(grads, torch.autograd.grad(loss, (outs, lses))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert bool(total[0].isinf().all()) and bool((out[0] == 0).all())


def test_top_members_without_ties_is_the_largest_values():
    from graphattn.nn.routing import _top_members

    sim = torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(14))
    for w in (1, 7, 49, 50):
        ref = torch.sort(sim, dim=-1, descending=True, stable=True).indices[..., :w].sort(-1).values
        assert torch.equal(_top_members(sim, w), ref)


def test_no_graph_or_plan_built_in_training_steps(monkeypatch):
    # Clusters are dense blocks attended by batched matmuls: though the clusters (and, in
    # training, the centroids) change every step, no graph and no tiling plan is built.
    from graphattn.nn import plan

    builds = []
    real = plan._build_plan
    monkeypatch.setattr(plan, "_build_plan", lambda *a, **kw: builds.append(1) or real(*a, **kw))
    torch.manual_seed(15)
    layer = RoutingAttention(16, 2, num_clusters=4, cluster_size=8, causal=True, ema_decay=0.5, seed=0)
    for _ in range(3):
        layer(torch.randn(2, 30, 16)).sum().backward()
    assert builds == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_attention_equals_the_engine_on_the_block_graph(dtype):
    # Oracle: graph_attention over the block-diagonal graph with a -inf edge bias on the masked
    # pairs; values, lse and the gradients through both (keyless rows included).
    from graphattn import AttentionGraph
    from graphattn.nn import graph_attention
    from graphattn.nn._routed import block_attention

    gen = torch.Generator().manual_seed(16)
    K, T, S, D = 5, 6, 6, 4
    q, k, v = (torch.randn(K, r, D, generator=gen, dtype=dtype, requires_grad=True) for r in (T, S, S))
    mask = torch.rand(K, T, S, generator=gen) < 0.4
    mask[1, 2] = True  # a keyless row
    mask[3] = True  # a keyless block
    out, lse = block_attention(q, k, v, mask, 0.7)
    g_out, g_lse = torch.randn(K, T, D, generator=gen, dtype=dtype), torch.randn(K, T, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * g_out).sum() + (lse.masked_fill(torch.isinf(lse), 0) * g_lse).sum(), (q, k, v))
    kb, qb, sb = torch.meshgrid(torch.arange(K), torch.arange(T), torch.arange(S), indexing="ij")
    keep = ~mask
    edge_index = torch.stack([(kb * S + sb)[keep], (kb * T + qb)[keep]])
    graph = AttentionGraph.from_edge_index(edge_index, K * T)
    ref, ref_lse = graph_attention(q.reshape(K * T, 1, D), k.reshape(K * S, 1, D), v.reshape(K * S, 1, D), graph,
                                   scale=0.7, return_lse=True)
    ref, ref_lse = ref.view(K, T, D), ref_lse.view(K, T).to(torch.float64)
    ref_grads = torch.autograd.grad((ref * g_out).sum() + (ref_lse.masked_fill(torch.isinf(ref_lse), 0) * g_lse).sum(),
                                    (q, k, v))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, ref, **tol)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and bool(torch.isinf(lse[3]).all())
    torch.testing.assert_close(lse.to(torch.float64), ref_lse, **tol)
    assert bool((out[3] == 0).all())
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **tol)
