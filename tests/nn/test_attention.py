import pytest
import torch
from tests.nn.reference import dense_attention, dense_bias

from graphattn import compose, rules
from graphattn.nn import GraphAttention, graph_attention


def project(layer, x):
    H, D = layer.num_heads, layer.head_dim
    q = layer.q_proj(x).view(-1, H, D)
    k = layer.k_proj(x).view(-1, H, D)
    v = layer.v_proj(x).view(-1, H, D)
    return q, k, v


def test_layer_matches_dense_reference_with_relative_bias():
    torch.manual_seed(0)
    g = rules.etc(30, num_global=3, radius=2)
    layer = GraphAttention(16, 4, num_relative=2 * 2 + 2)
    torch.nn.init.normal_(layer.relative_bias.weight)
    x = torch.randn(g.num_nodes, 16)
    out = layer(x, g)
    q, k, v = project(layer, x)
    bias = layer.relative_bias(g.relative)
    ref, _ = dense_attention(q, k, v, g.to_dense(), dense_bias(g.edge_index, bias, g.num_nodes, g.num_nodes))
    ref = layer.out_proj(ref.float().reshape(g.num_nodes, 16))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the relative bias is learned: its gradient is the reference's (a bias id shared by many
    # edges sums their gradients)
    out.pow(2).sum().backward()
    grad = layer.relative_bias.weight.grad.clone()
    layer.zero_grad()
    ref.pow(2).sum().backward()
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, layer.relative_bias.weight.grad, rtol=1e-4, atol=1e-5)


def test_batched_equals_per_sample_and_weights_shape():
    torch.manual_seed(1)
    g = rules.bigbird(96, block_size=8, seed=0)
    layer = GraphAttention(24, 3)
    x = torch.randn(4, 96, 24)
    out, w = layer(x, g, return_attention_weights=True)
    assert out.shape == (4, 96, 24) and w.shape == (4, g.num_edges, 3)
    for b in range(4):
        ob, wb = layer(x[b], g, return_attention_weights=True)
        torch.testing.assert_close(out[b], ob, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w[b], wb, rtol=1e-5, atol=1e-6)


def test_batched_per_head_layout():
    torch.manual_seed(2)
    g = rules.longformer(40, radius=2, dilation=[1, 2], global_indices=[0])
    layer = GraphAttention(8, 2)
    x = torch.randn(3, 40, 8)
    out = layer(x, g)
    for b in range(3):
        torch.testing.assert_close(out[b], layer(x[b], g), rtol=1e-5, atol=1e-6)


def test_cross_attention_with_bipartite_edge_index():
    torch.manual_seed(3)
    nq, nk = 7, 11
    key, query = torch.meshgrid(torch.arange(nk), torch.arange(nq), indexing="xy")
    ei = torch.stack([key.reshape(-1), query.reshape(-1)])  # full bipartite, sorted by query
    layer = GraphAttention(8, 2, kdim=5, vdim=5)
    x, mem = torch.randn(nq, 8), torch.randn(nk, 5)
    out = layer(x, ei, x_kv=mem)
    ref = torch.nn.MultiheadAttention(8, 2, kdim=5, vdim=5, batch_first=True)
    with torch.no_grad():
        ref.q_proj_weight.copy_(layer.q_proj.weight)
        ref.k_proj_weight.copy_(layer.k_proj.weight)
        ref.v_proj_weight.copy_(layer.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
        ref.out_proj.weight.copy_(layer.out_proj.weight)
        ref.out_proj.bias.copy_(layer.out_proj.bias)
    expected, _ = ref(x[None], mem[None], mem[None])
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-6)


def test_equals_pyg_transformer_conv():
    from torch_geometric.nn import TransformerConv

    torch.manual_seed(4)
    g = rules.random(50, num_random_keys=6, seed=3) | rules.band(50, radius=1)
    H, C = 2, 5
    conv = TransformerConv(12, C, heads=H, root_weight=False)
    x = torch.randn(50, 12)
    expected = conv(x, g.edge_index)  # [N, H * C], concatenated heads
    q = conv.lin_query(x).view(-1, H, C)
    k = conv.lin_key(x).view(-1, H, C)
    v = conv.lin_value(x).view(-1, H, C)
    out = graph_attention(q, k, v, g).reshape(50, H * C)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("radius,globals_", [(2, [0]), (4, [0, 5, 17]), (3, [])])
def test_equals_hf_longformer_self_attention(radius, globals_):
    transformers = pytest.importorskip("transformers")
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    torch.manual_seed(5)
    n, E, H = 8 * radius, 16, 4  # HF wants the length to be a multiple of the window 2r
    config = transformers.LongformerConfig(hidden_size=E, num_attention_heads=H, attention_window=[2 * radius],
                                           attention_probs_dropout_prob=0.0)
    hf = LongformerSelfAttention(config, layer_id=0).eval()
    with torch.no_grad():  # global projections tied to the local ones
        for a, b in ((hf.query_global, hf.query), (hf.key_global, hf.key), (hf.value_global, hf.value)):
            a.load_state_dict(b.state_dict())
    x = torch.randn(1, n, E)
    mask = torch.zeros(1, n)
    mask[0, globals_] = 10000.0
    expected = hf(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                  is_global_attn=bool(globals_))[0]
    g = rules.longformer(n, radius=radius, global_indices=globals_)
    q = hf.query(x[0]).view(n, H, E // H)
    k = hf.key(x[0]).view(n, H, E // H)
    v = hf.value(x[0]).view(n, H, E // H)
    out = graph_attention(q, k, v, g).reshape(n, E)
    torch.testing.assert_close(out, expected.reshape(n, E), rtol=1e-5, atol=1e-5)


def test_inside_pyg_sequential():
    from torch_geometric.nn import Sequential

    torch.manual_seed(6)
    g = rules.band(20, radius=2)
    layer = GraphAttention(8, 2)
    model = Sequential("x, edge_index", [(layer, "x, edge_index -> x"), torch.nn.ReLU()])
    x = torch.randn(20, 8)
    torch.testing.assert_close(model(x, g.edge_index), torch.relu(layer(x, g)))


def test_torch_compile_matches_eager():
    torch.manual_seed(7)
    g = rules.band(64, radius=3) | rules.global_tokens(64, global_indices=[0])
    layer = GraphAttention(16, 2)
    x = torch.randn(64, 16)
    compiled = torch.compile(layer)
    torch.testing.assert_close(compiled(x, g), layer(x, g), rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
    g = rules.band(30, radius=3)
    layer = GraphAttention(8, 2, dropout=0.5)
    x = torch.randn(30, 8)
    layer.eval()
    torch.testing.assert_close(layer(x, g), layer(x, g))
    layer.train()
    torch.manual_seed(0)
    a = layer(x, g)
    torch.manual_seed(1)
    assert not torch.allclose(a, layer(x, g))


def test_layer_errors():
    with pytest.raises(ValueError, match="divisible"):
        GraphAttention(10, 3)
    with pytest.raises(ValueError, match="num_heads >= 1"):
        GraphAttention(8, 0)
    layer = GraphAttention(8, 2, num_relative=3)
    with pytest.raises(ValueError, match="embed_dim = 8"):
        layer(torch.randn(5, 7), rules.band(5, radius=1))
    with pytest.raises(ValueError, match="num_relative = 3"):
        layer(torch.randn(6, 8), rules.etc(4, num_global=2, radius=2))
    with pytest.raises(ValueError, match="edge_bias"):
        layer(torch.randn(5, 8), rules.band(5, radius=1), edge_bias=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="heads"):
        graph_attention(torch.randn(8, 3, 4), torch.randn(8, 3, 4), torch.randn(8, 3, 4),
                        compose.stack_heads([rules.band(8, radius=1)] * 2))
