"""Ragged batches for the graph models (internal; also used by the Hugging Face integration).

A padded batch ``[B, n]`` becomes one disjoint union of per-sample graphs
(:func:`graphattn.compose.batch`): each sample's graph is built for its true length (its
positions where the attention mask is true, or whose token is not ``padding_idx``), so padding
never enters the graph and a padded sample gives exactly the result of the unpadded one. The
real positions are flattened sample-major (:class:`Ragged`); every layer runs once over the
union, not once per sample.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import torch

from graphattn._validate import check_float, check_int
from graphattn.compose import batch

__all__ = ["Ragged", "ragged_tokens", "ragged_input", "ragged_mask", "check_mask", "check_tokens", "classifier_args",
           "LengthCache", "batched_graph", "lru_get", "pad_rows"]


class Ragged(NamedTuple):
    """The real tokens of a padded batch, flattened sample-major.

    ids ``[T]`` token ids (None for a batch given by its mask only), sample ``[T]`` sample of
    each, position ``[T]`` position inside its sample (padding removed), lengths ``[B]``, ptr
    ``[B + 1]`` offsets of each sample in the flattened order, keep ``[B, n]`` the mask of the
    real positions (``x[keep]`` is the flattened order).
    """

    ids: torch.Tensor | None
    sample: torch.Tensor
    position: torch.Tensor
    lengths: torch.Tensor
    ptr: torch.Tensor
    keep: torch.Tensor

    def scatter(self, flat: torch.Tensor) -> torch.Tensor:
        """``flat [T, ...]`` back to the padded ``[B, n, ...]`` layout, zeros at padding."""
        out = flat.new_zeros(*self.keep.shape, *flat.shape[1:])
        return out.index_put((self.keep,), flat)

    def positions(self) -> torch.Tensor:
        """``[B, n]`` position of each entry among its sample's real ones (0 at padding)."""
        return (torch.cumsum(self.keep, dim=1) - 1).clamp_min(0) * self.keep


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape [B, n], got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"expected {name} to hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"expected {name} of shape [B, n], got {list(tokens.shape)}")
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"expected {name} ids in [0, vocab_size = {vocab_size}), got {lo if lo < 0 else hi}")
    return tokens.long()


def classifier_args(vocab_size, embed_dim, num_heads, num_layers, num_classes, padding_idx, max_len, dropout):
    """The validated arguments every token classifier takes, in that order."""
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    return (vocab_size, check_int("embed_dim", embed_dim, minimum=1), check_int("num_heads", num_heads, minimum=1),
            check_int("num_layers", num_layers, minimum=1), check_int("num_classes", num_classes, minimum=1),
            None if padding_idx is None else check_int("padding_idx", padding_idx, minimum=0, maximum=vocab_size - 1),
            check_int("max_len", max_len, minimum=1), check_float("dropout", dropout, minimum=0.0, maximum=1.0))


def ragged_input(tokens, vocab_size: int, padding_idx: int | None, max_len: int,
                 attention_mask: torch.Tensor | None = None) -> Ragged:
    """A classifier's ``tokens [B, n]`` checked and without padding (``attention_mask`` false,
    or ``padding_idx``); at most ``max_len`` real tokens per sample."""
    r = ragged_tokens(check_tokens(tokens, vocab_size), padding_idx, attention_mask)
    if int(r.lengths.max()) > max_len:
        raise ValueError(f"expected at most max_len = {max_len} non-padding tokens per sample, "
                         f"got {int(r.lengths.max())}")
    return r


def ragged_tokens(tokens: torch.Tensor, padding_idx: int | None, attention_mask: torch.Tensor | None = None
                  ) -> Ragged:
    """Drop the padding of ``tokens [B, n]`` (anywhere in a row): the entries where
    ``attention_mask`` is false when it is given, else the ``padding_idx`` entries. Every
    sample must keep at least one token."""
    if attention_mask is not None:
        keep = check_mask(attention_mask, tokens.shape)
    else:
        keep = torch.ones_like(tokens, dtype=torch.bool) if padding_idx is None else tokens != padding_idx
    r = ragged_mask(keep, why=f"padding_idx = {padding_idx}" if attention_mask is None else None)
    return r._replace(ids=tokens[keep])


def check_mask(mask, shape, name: str = "attention_mask") -> torch.Tensor:
    """An attention mask ``[B, n]`` (bool, or integers 0/1 as Hugging Face tokenizers return):
    true (1) at real positions, false (0) at padding. Returns it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape {list(shape)}, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"expected {name} of shape {list(shape)}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise TypeError(f"expected {name} to be a bool or integer 0/1 tensor, got dtype {mask.dtype}")
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"expected {name} values in {{0, 1}}, got {sorted(set(mask.unique().tolist()) - {0, 1})[:3]}")
        mask = mask.bool()
    return mask


def ragged_mask(keep: torch.Tensor, name: str = "attention_mask", why: str | None = None) -> Ragged:
    """The :class:`Ragged` layout of a bool mask ``keep [B, n]`` (``ids`` None); every sample
    must keep at least one position."""
    lengths = keep.sum(dim=1)
    if keep.shape[0] and int(lengths.min()) == 0:
        bad = int(torch.nonzero(lengths == 0)[0])
        if why is not None:
            raise ValueError(f"expected every sample of tokens to hold a non-padding token, sample {bad} is all {why}")
        raise ValueError(f"expected every sample of {name} to keep at least one position, sample {bad} keeps none")
    position = (torch.cumsum(keep, dim=1) - 1)[keep]
    sample = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    ptr = torch.zeros(keep.shape[0] + 1, dtype=torch.int64, device=keep.device)
    torch.cumsum(lengths, 0, out=ptr[1:])
    return Ragged(None, sample, position, lengths, ptr, keep)


def lru_get(cache: OrderedDict, key, make: Callable[[], object], size: int):
    """``cache[key]``, made by ``make()`` on a miss; least recently used entries beyond ``size``
    are dropped."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def pad_rows(values: torch.Tensor, ptr: torch.Tensor, fill=0):
    """Rows of a ragged ``values [T, ...]`` (sample ``b`` owns ``values[ptr[b]:ptr[b+1]]``)
    padded to ``[B, L, ...]`` with ``fill``; also returns the bool mask ``[B, L]`` of real rows."""
    lengths = ptr[1:] - ptr[:-1]
    width = int(lengths.max()) if lengths.numel() else 0
    keep = torch.arange(width, device=values.device)[None, :] < lengths[:, None]
    out = values.new_full((lengths.numel(), width, *values.shape[1:]), fill)
    return out.index_put((keep,), values), keep


class LengthCache:
    """LRU cache of ``make(n)`` per length ``n`` (graphs and their cached tiling plans)."""

    def __init__(self, make: Callable[[int], object], size: int = 32):
        self.make = make
        self.size = size
        self._store: OrderedDict = OrderedDict()

    def __call__(self, n: int):
        return lru_get(self._store, n, lambda: self.make(n), self.size)


def batched_graph(per_length: LengthCache, lengths: torch.Tensor, device, cache: OrderedDict,
                  post: Callable | None = None, size: int = 8):
    """``post(graph, ptr)`` (default ``(graph, ptr)``) of the ``compose.batch`` of the per-sample
    graphs for ``lengths``, on ``device``; cached per tuple of lengths, so a fixed-shape training
    loop reuses one graph and its tiling plan."""
    key = (tuple(lengths.tolist()), str(device))

    def make():
        g, ptr = batch([per_length(n) for n in key[0]])
        g, ptr = g.to(device), ptr.to(device)
        return (g, ptr) if post is None else post(g, ptr)

    return lru_get(cache, key, make, size)
