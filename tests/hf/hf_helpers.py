"""Tiny randomly initialised transformers models, padded batches and a float64 dense reference attention."""

import copy

import torch
import transformers

REFERENCE = "graphattn_test_dense64"  # the reference attention function's registered name


def tiny_bert(**overrides):
    cfg = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               attn_implementation="sdpa")
    cfg.update(overrides)
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**cfg)).eval()


def tiny_llama(**overrides):
    cfg = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=48, max_position_embeddings=64, attn_implementation="sdpa")
    cfg.update(overrides)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()


def tiny_gpt2(**overrides):
    cfg = dict(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=40, resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, attn_implementation="sdpa")
    cfg.update(overrides)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()


def padded_batch(lengths, n=None, *, left=False, vocab=60, seed=0):
    """``(input_ids [B, n], attention_mask [B, n])`` with ``lengths[b]`` real tokens (ids >= 1)."""
    n = max(lengths) if n is None else n
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), n), generator=gen)
    pos = torch.arange(n)
    real = torch.stack([(pos >= n - m) if left else (pos < m) for m in lengths])
    return ids.masked_fill(~real, 0), real.long()


def dense_masks(graph, heads):
    """Bool ``[H, n, n]`` (query, key) mask of ``graph`` for every head (its head layout if any)."""
    n = graph.num_nodes
    out = torch.zeros(heads, n, n, dtype=torch.bool)
    key, query = graph.edge_index
    if graph.head_mask is None:
        out[:, query, key] = True
    else:
        h, e = graph.head_mask.t().nonzero(as_tuple=True)
        out[h, query[e], key[e]] = True
    return out


class DenseReference:
    """A float64 dense masked-softmax attention registered with transformers: layer ``l`` of sample
    ``b`` attends over ``graph_of(l, m_b)`` placed on the sample's real positions (written without
    graphattn.hf: one sample at a time, with an ``[H, n, n]`` mask)."""

    def __init__(self, graph_of, attention_mask):
        self.graph_of = graph_of
        self.real = attention_mask.bool()

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        from graphattn.nn.reference import dense_attention

        B, H, n, _ = query.shape
        reps = H // key.shape[1]
        key, value = key.repeat_interleave(reps, 1), value.repeat_interleave(reps, 1)
        outs = []
        for b in range(B):
            pos = self.real[b].nonzero().flatten()
            mask = torch.zeros(H, n, n, dtype=torch.bool)
            small = dense_masks(self.graph_of(module.layer_idx, len(pos)), H)
            mask[:, pos[:, None], pos[None, :]] = small
            out, _ = dense_attention(query[b].transpose(0, 1), key[b].transpose(0, 1), value[b].transpose(0, 1),
                                     mask, scale=scaling)
            outs.append(out)
        return torch.stack(outs).to(query.dtype), None


def make_reference(model, graph_of, attention_mask):
    """A float64 copy of ``model`` whose attention is :class:`DenseReference`."""
    ref = copy.deepcopy(model).double()
    transformers.AttentionInterface.register(REFERENCE, DenseReference(graph_of, attention_mask))
    ref.set_attn_implementation(REFERENCE)
    return ref


def assert_real_close(a, b, real, **tol):
    """``a`` and ``b`` ``[B, n, ...]`` agree at the real (unpadded) positions."""
    real = real.bool()
    torch.testing.assert_close(a[real].double(), b[real].double(), **tol)
