"""Longformer's position-extension recipe: learned absolute position embeddings made longer by copies."""

from __future__ import annotations

import torch
from torch import nn

from graphattn._validate import check_int

__all__ = ["extend_positions", "position_embedding"]

# Attribute names of learned absolute position tables in transformers' models: BERT, RoBERTa,
# ELECTRA, DistilBERT and their kin (``position_embeddings``), GPT-2 (``wpe``).
_NAMES = ("position_embeddings", "wpe")


def position_embedding(model):
    """``(parent module, attribute name, nn.Embedding)`` of ``model``'s learned absolute position
    table (rows ``offset .. offset + max_position_embeddings``), or ``None`` when it has none."""
    found = []
    for parent in model.modules():
        for name in _NAMES:
            emb = parent._modules.get(name)
            if isinstance(emb, nn.Embedding):
                found.append((parent, name, emb))
    if len(found) > 1:
        raise ValueError(f"expected one learned position table in {type(model).__name__}, found {len(found)}")
    return found[0] if found else None


def extend_positions(model, max_length: int, *, tokenizer=None):
    """Give ``model`` learned absolute position embeddings for ``max_length`` tokens by copying the
    ones it has (Longformer's recipe for making a pretrained model long).

    A model with ``L`` positions gets a table of ``max_length`` rows: row ``p`` is a copy of row
    ``p mod L``; a table with a padding offset (RoBERTa keeps ``padding_idx + 1`` rows in front of
    its positions) keeps those rows and copies the positions after them. The embedding's buffers
    of per-position ids (``position_ids``, ``token_type_ids``) grow with it, and
    ``config.max_position_embeddings`` (and ``tokenizer.model_max_length``, when a tokenizer is
    given) are updated. The copies are not trained: each block of ``L`` positions repeats the
    first; continued training (masked-token or contrastive) adapts them. Returns the model.

    Models whose positions are rotary (Llama, Mistral, ...) or relative (T5, DeBERTa) have no
    table to extend and need none: they run at any length; they are refused with a ``ValueError``.
    """
    table = position_embedding(model)
    config = model.config
    if table is None:
        kind = "rotary" if any(hasattr(config, a) for a in ("rope_theta", "rope_parameters", "rope_scaling")) \
            else "rotary, relative or absent"
        raise ValueError(f"expected a model with learned absolute position embeddings, got {type(model).__name__} "
                         f"whose positions are {kind}: such a model needs no extension, it runs at any length")
    parent, name, old = table
    offset = 0 if old.padding_idx is None else old.padding_idx + 1
    old_len = old.num_embeddings - offset
    max_length = check_int("max_length", max_length, minimum=old_len + 1)
    new = nn.Embedding(offset + max_length, old.embedding_dim, padding_idx=old.padding_idx,
                       device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:offset] = old.weight[:offset]
        rows = torch.arange(max_length, device=old.weight.device) % old_len
        new.weight[offset:] = old.weight[offset + rows]
    new.weight.requires_grad_(old.weight.requires_grad)
    setattr(parent, name, new)
    size = offset + max_length
    for buf, fill in (("position_ids", "arange"), ("token_type_ids", "zeros")):
        current = getattr(parent, buf, None)
        if isinstance(current, torch.Tensor) and current.shape[-1] == old.num_embeddings:
            ids = (torch.arange(size, device=current.device) if fill == "arange"
                   else torch.zeros(size, dtype=current.dtype, device=current.device))
            parent.register_buffer(buf, ids.expand(1, -1).to(current.dtype), persistent=False)
    config.max_position_embeddings = size
    if tokenizer is not None:
        tokenizer.model_max_length = max_length
    return model
