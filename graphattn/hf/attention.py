"""The attention function and padding-mask function graphattn registers with transformers.

transformers dispatches every attention layer through ``ALL_ATTENTION_FUNCTIONS[
config._attn_implementation]`` and builds the layers' mask through ``ALL_MASK_ATTENTION_FUNCTIONS``
under the same name. Under the name :data:`IMPLEMENTATION`:

* the mask function hands the layers the 2D padding mask itself (``[B, kv_length]`` bool, true
  for a real token), or ``None`` when nothing is padded: no ``[B, 1, q, kv]`` mask is ever built;
* the attention function runs :func:`graphattn.nn.graph_attention` over the layer's graph on the
  real tokens of each sample: sample ``b`` with ``m_b`` real tokens runs on the graph built for
  length ``m_b``, all samples in one call over the disjoint union of their graphs
  (:func:`graphattn.compose.batch`), so a padded sample gives exactly what it gives alone.
  Padded query positions output zeros. Layers that :func:`~graphattn.hf.sparsify` left dense
  (and cross-attention) run transformers' own SDPA attention with the same padding.
"""

from __future__ import annotations

import torch

from graphattn.nn.functional import graph_attention

__all__ = ["IMPLEMENTATION", "LAYER_ATTRIBUTE", "graph_attention_forward", "padding_mask", "register"]

#: The ``attn_implementation`` name under which graphattn is registered with transformers.
IMPLEMENTATION = "graphattn"
#: The attribute of a sparsified attention module that holds its :class:`~graphattn.hf.graphs.LayerGraphs`.
LAYER_ATTRIBUTE = "_graphattn_graphs"

# Per-call options of other attention functions that change the scores: a graph cannot honour them.
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias", "sliding_window")


def register() -> None:
    """Register :func:`graph_attention_forward` and :func:`padding_mask` under :data:`IMPLEMENTATION`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, graph_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, padding_mask)


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0, mask_function=None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask function for transformers' ``AttentionMaskInterface``: the 2D padding mask
    ``[batch_size, kv_length]`` (true = real key) or ``None`` when no key is padded.

    The attention pattern is the graph's: the model's own pattern must be plain causal or plain
    bidirectional (the graph replaces it); sliding-window, chunked, packed-sequence or other
    overlays are refused, as are causal caches whose queries are not the last ``q_length`` keys
    (static caches). A bidirectional mask may have other keys than queries (cross-attention).
    """
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, prepare_padding_mask

    if mask_function not in (causal_mask_function, bidirectional_mask_function):
        raise ValueError(
            f"graphattn attention replaces the model's mask by a graph, but this model asks for a mask pattern of its "
            f"own ({getattr(mask_function, '__qualname__', mask_function)}: sliding window, chunks, packed sequences "
            f"or an overlay); only plain causal and bidirectional models are supported")
    q_offset, kv_offset = int(q_offset), int(kv_offset)
    if mask_function is causal_mask_function and q_offset + q_length != kv_offset + kv_length:
        raise ValueError(
            f"graphattn attention expects the queries to be the last keys (no cache, or a dynamic cache), got queries "
            f"[{q_offset}, {q_offset + q_length}) and keys [{kv_offset}, {kv_offset + kv_length}) (a static cache?)")
    if attention_mask is None:
        return None
    pad = prepare_padding_mask(attention_mask.bool(), kv_length, kv_offset)[:, kv_offset:kv_offset + kv_length]
    return None if bool(pad.all()) else pad


def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped-query attention: key/value head ``h // groups`` serves query head ``h`` (transformers' repeat_kv)."""
    if t.shape[1] == heads:
        return t
    if heads % t.shape[1]:
        raise ValueError(f"expected the query heads ({heads}) to be a multiple of the key/value heads ({t.shape[1]})")
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def _check_mask(attention_mask, B: int, nk: int):
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool or attention_mask.dim() != 2:
        got = (f"{attention_mask.dtype} {list(attention_mask.shape)}" if isinstance(attention_mask, torch.Tensor)
               else type(attention_mask).__name__)
        raise ValueError(f"graphattn attention takes the 2D padding mask [batch, keys] that its mask function "
                         f"builds, got {got} (custom 4D masks are not supported: express them as a graph)")
    if tuple(attention_mask.shape) != (B, nk):
        raise ValueError(f"expected a padding mask of shape [{B}, {nk}], got {list(attention_mask.shape)}")
    return attention_mask


def _check_heads(g, H: int, layers) -> None:
    if g.num_heads is not None and g.num_heads != H:  # num_heads, not head_mask: reads no edges
        raise ValueError(f"{layers.where}: expected a per-head graph for the model's {H} heads, got {g.num_heads}")


def graph_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            is_causal: bool | None = None, **kwargs):
    """transformers attention function: ``query [B, H, nq, D]``, ``key``/``value [B, Hkv, nk, D]``
    (``nq < nk`` while decoding with a cache: the queries are the last ``nq`` keys), the padding
    mask of :func:`padding_mask`. Returns ``(out [B, nq, H, Dv], None)``."""
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"graphattn attention does not support the {name!r} option of this model")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    B, H, nq, _ = query.shape
    nk = key.shape[2]
    mask = _check_mask(attention_mask, B, nk)
    layer = getattr(module, LAYER_ATTRIBUTE, None)
    if layer is None:
        return _dense(module, query, key, value, mask, dropout, scaling, causal, kwargs)
    key, value = _repeat_heads(key, H), _repeat_heads(value, H)
    scale = {} if scaling is None else {"scale": float(scaling)}
    if mask is None and nq == nk:
        out = _unpadded(layer, query, key, value, dict(scale, dropout_p=dropout))
    else:
        if mask is None:
            mask = torch.ones(B, nk, dtype=torch.bool, device=key.device)
        out = _ragged(layer, query, key, value, mask, dict(scale, dropout_p=dropout))
    return out, None


def _unpadded(layer, query, key, value, options):
    """Every sample has all ``n`` tokens: one graph; the batch folds into the heads."""
    B, H, n, _ = query.shape
    g = layer.graph(n, query.device)
    _check_heads(g, H, layer)
    if B == 1:
        out = graph_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), g, **options)
        return out[None]
    if g.head_mask is not None:  # a per-head layout cannot fold the batch into the heads
        return _ragged(layer, query, key, value, torch.ones(B, n, dtype=torch.bool, device=key.device), options)
    fold = lambda t: t.permute(2, 0, 1, 3).reshape(n, B * H, t.shape[-1])  # noqa: E731  [B,H,n,D] -> [n,B*H,D]
    out = graph_attention(fold(query), fold(key), fold(value), g, **options)
    return out.view(n, B, H, -1).transpose(0, 1)


def _ragged(layer, query, key, value, mask, options):
    """Padded samples: the real keys of all samples packed in one disjoint union of their graphs.

    Sample ``b`` has ``m_b`` real keys (node ``i`` of its graph is its ``i``-th real token); its
    real queries are the last ``r_b`` of them (``r_b = m_b`` without a cache), the rows
    ``[m_b - r_b, m_b)`` of its graph.
    """
    B, H, nq, _ = query.shape
    nk = key.shape[2]
    lengths = mask.sum(dim=1)
    qmask = mask[:, nk - nq:]
    k = key.transpose(1, 2)[mask]  # [T, H, D] sample-major, in token order
    v = value.transpose(1, 2)[mask]
    if nq == nk:
        g = layer.batched(lengths, key.device)
        _check_heads(g, H, layer)
        out = graph_attention(query.transpose(1, 2)[mask], k, v, g, **options)
    else:
        from graphattn.compose import batch

        # Decoding with a cache: each sample's query rows of its graph, queries placed at their key nodes.
        rows = qmask.sum(dim=1)
        starts = (lengths - rows).tolist()
        g = batch([layer.graph(m, "cpu").query_slice(s, m) for m, s in zip(lengths.tolist(), starts)])[0]
        g = g.to(key.device)
        _check_heads(g, H, layer)
        rank = torch.cumsum(mask, dim=1) - 1 + (torch.cumsum(lengths, 0) - lengths)[:, None]
        node = rank[:, nk - nq:][qmask]  # the key node of each real query
        q = query.new_zeros(k.shape[0], H, query.shape[-1]).index_put((node,), query.transpose(1, 2)[qmask])
        out = graph_attention(q, k, v, g, **options)[node]
        mask = qmask
    full = out.new_zeros(B, nq, H, out.shape[-1])
    return full.index_put((mask,), out)


def _dense(module, query, key, value, mask, dropout, scaling, causal, kwargs):
    """A layer left dense: transformers' SDPA attention with the padding (and causal) mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask

    B, _, nq, _ = query.shape
    nk = key.shape[2]
    mask4d = None
    if mask is not None or (causal and nq != nk):
        # Causal queries are the last keys; bidirectional ones (cross-attention too) need no offset.
        mask4d = sdpa_mask(batch_size=B, q_length=nq, kv_length=nk, q_offset=nk - nq if causal else 0,
                           mask_function=causal_mask_function if causal else bidirectional_mask_function,
                           attention_mask=mask, allow_is_causal_skip=False, device=query.device)
    return sdpa_attention_forward(module, query, key, value, mask4d, dropout=dropout, scaling=scaling,
                                  is_causal=causal, **kwargs)
