"""Ragged batches for the graph models (internal).

A padded batch ``tokens [B, n]`` becomes one disjoint union of per-sample graphs
(:func:`graphattn.compose.batch`): each sample's graph is built for its true length (the
tokens that are not ``padding_idx``), so padding never enters the graph and a padded sample
gives exactly the result of the unpadded one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import torch

from graphattn._validate import check_float, check_int
from graphattn.compose import batch

__all__ = ["Ragged", "ragged_tokens", "ragged_input", "classifier_args", "LengthCache", "batched_graph"]


class Ragged(NamedTuple):
    """The real tokens of a padded batch, flattened sample-major.

    ids ``[T]`` token ids, sample ``[T]`` sample of each, position ``[T]`` position inside its
    sample (padding removed), lengths ``[B]``, ptr ``[B + 1]`` offsets of each sample in ``ids``.
    """

    ids: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    lengths: torch.Tensor
    ptr: torch.Tensor


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


def ragged_input(tokens, vocab_size: int, padding_idx: int | None, max_len: int) -> Ragged:
    """A classifier's ``tokens [B, n]`` checked and without padding; at most ``max_len`` real
    tokens per sample."""
    r = ragged_tokens(check_tokens(tokens, vocab_size), padding_idx)
    if int(r.lengths.max()) > max_len:
        raise ValueError(f"expected at most max_len = {max_len} non-padding tokens per sample, "
                         f"got {int(r.lengths.max())}")
    return r


def ragged_tokens(tokens: torch.Tensor, padding_idx: int | None) -> Ragged:
    """Drop the ``padding_idx`` entries of ``tokens [B, n]`` (anywhere in a row); every sample
    must keep at least one token."""
    keep = torch.ones_like(tokens, dtype=torch.bool) if padding_idx is None else tokens != padding_idx
    lengths = keep.sum(dim=1)
    if tokens.shape[0] and int(lengths.min()) == 0:
        bad = int(torch.nonzero(lengths == 0)[0])
        raise ValueError(f"expected every sample of tokens to hold a non-padding token, sample {bad} is all "
                         f"padding_idx = {padding_idx}")
    position = (torch.cumsum(keep, dim=1) - 1)[keep]
    sample = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(tokens)[keep]
    ptr = torch.zeros(tokens.shape[0] + 1, dtype=torch.int64, device=tokens.device)
    torch.cumsum(lengths, 0, out=ptr[1:])
    return Ragged(tokens[keep], sample, position, lengths, ptr)


class LengthCache:
    """LRU cache of ``make(n)`` per length ``n`` (graphs and their cached tiling plans)."""

    def __init__(self, make: Callable[[int], object], size: int = 32):
        self.make = make
        self.size = size
        self._store: OrderedDict = OrderedDict()

    def __call__(self, n: int):
        value = self._store.get(n)
        if value is None:
            value = self.make(n)
            self._store[n] = value
            if len(self._store) > self.size:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(n)
        return value


def batched_graph(per_length: LengthCache, lengths: torch.Tensor, device, cache: OrderedDict,
                  post: Callable | None = None, size: int = 8):
    """``post(graph, ptr)`` (default ``(graph, ptr)``) of the ``compose.batch`` of the per-sample
    graphs for ``lengths``, on ``device``; cached per tuple of lengths, so a fixed-shape training
    loop reuses one graph and its tiling plan."""
    key = (tuple(lengths.tolist()), str(device))
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    g, ptr = batch([per_length(n) for n in key[0]])
    g, ptr = g.to(device), ptr.to(device)
    hit = (g, ptr) if post is None else post(g, ptr)
    cache[key] = hit
    if len(cache) > size:
        cache.popitem(last=False)
    return hit
