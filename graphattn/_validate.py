"""Argument checks shared by every public function.

Each check raises a ``TypeError`` or ``ValueError`` that names the parameter, what was expected
and what came, e.g. ``ValueError: expected radius >= 0, got -1``. User input is never checked
with ``assert``.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from typing import Sequence

import torch

__all__ = ["renamed_parameters", "check_features", "check_int", "check_float", "check_bool", "check_query_range", "check_index_list", "check_heads", "check_edge_index"]


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int after checking its type and range."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.Tensor)):
        raise TypeError(f"expected {name} to be an int, got {type(value).__name__} {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"expected {name} to be an int, got tensor {value!r}")
        value = value.item()
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"expected {name} <= {maximum}, got {value}")
    return value


def check_float(name: str, value, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``value`` as a Python float after checking its type and closed range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected {name} to be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"expected {name} to be a number, got nan")
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"expected {name} <= {maximum}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected {name} to be a bool, got {type(value).__name__} {value!r}")
    return value


def check_heads(embed_dim, num_heads) -> tuple[int, int, int]:
    """``(embed_dim, num_heads, head_dim)`` of a multi-head layer: positive ints, the width
    divisible by the head count."""
    embed_dim = check_int("embed_dim", embed_dim, minimum=1)
    num_heads = check_int("num_heads", num_heads, minimum=1)
    if embed_dim % num_heads:
        raise ValueError(f"expected embed_dim divisible by num_heads, got {embed_dim} and {num_heads}")
    return embed_dim, num_heads, embed_dim // num_heads


def check_features(x, width: int, *, name: str = "x", width_name: str = "embed_dim",
                   min_tokens: int = 0) -> tuple[torch.Tensor, bool]:
    """A layer's input: a floating ``[N, E]`` or ``[B, N, E]`` tensor with ``E = width`` and at
    least ``min_tokens`` tokens; returns ``(x as [B, N, E], whether it was batched)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape [N, E] or [B, N, E], got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"expected {name} of shape [N, E] or [B, N, E], got {list(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"expected {name} to be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[-1] != width:
        raise ValueError(f"expected {name} with last dim {width_name} = {width}, got {x.shape[-1]}")
    if x.shape[-2] < min_tokens:
        raise ValueError(f"expected {name} with N >= {min_tokens} tokens, got shape {list(x.shape)}")
    batched = x.dim() == 3
    return (x if batched else x.unsqueeze(0)), batched


def check_query_range(queries, num_nodes: int) -> tuple[int, int]:
    """Normalise the sharding argument ``queries`` to ``(start, stop)`` node ids.

    ``None`` means every node; otherwise a ``range`` with step 1 inside ``[0, num_nodes]``.
    """
    if queries is None:
        return 0, num_nodes
    if not isinstance(queries, range):
        raise TypeError(f"expected queries to be a range or None, got {type(queries).__name__}")
    if queries.step != 1:
        raise ValueError(f"expected queries to be a range with step 1, got step {queries.step}")
    if not 0 <= queries.start <= queries.stop <= num_nodes:
        raise ValueError(
            f"expected queries inside range(0, {num_nodes}) with start <= stop, got {queries}"
        )
    return queries.start, queries.stop


def check_index_list(name: str, values, *, size: int, what: str = "index") -> torch.Tensor:
    """Return a sorted, unique int64 tensor of indices in ``[0, size)``; duplicates are an error."""
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype == torch.bool:
            raise TypeError(f"expected {name} to hold integers, got dtype {values.dtype}")
        t = values.detach().to("cpu", torch.int64).reshape(-1)
    else:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"expected {name} to be a sequence of ints, got {type(values).__name__}")
        t = torch.tensor([check_int(f"{name}[{p}]", v) for p, v in enumerate(values)], dtype=torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"expected every {what} in {name} to lie in [0, {size}), got {bad}")
    uniq = torch.unique(t)
    if uniq.numel() != t.numel():
        raise ValueError(f"expected {name} to hold distinct values, got duplicates in {t.tolist()}")
    return uniq


def check_edge_index(edge_index, num_nodes=None, *, num_keys=None, num_queries=None,
                     device=None) -> tuple[torch.Tensor, int]:
    """The one edge_index check: an integer ``[2, E]`` tensor (any integer dtype; returned as
    int64) whose keys (row 0) lie in ``[0, num_keys)`` and queries (row 1) in ``[0,
    num_queries)``, both ``num_nodes`` for a graph on one node set; on ``device`` when given.
    Returns ``(edge_index as int64, num_nodes)`` (``num_nodes`` None for a bipartite check)."""
    if num_nodes is not None:
        num_nodes = check_int("num_nodes", num_nodes, minimum=0)
        num_keys = num_queries = num_nodes
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"expected edge_index to be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex or edge_index.dtype == torch.bool:
        raise TypeError(f"expected edge_index to hold integers, got dtype {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"expected edge_index of shape [2, E], got {list(edge_index.shape)}")
    if device is not None and edge_index.device != device:
        raise ValueError(f"expected edge_index on {device} like q, got {edge_index.device}")
    edge_index = edge_index.to(torch.int64)
    if edge_index.numel():
        if num_nodes is not None:
            lo, hi = int(edge_index.min()), int(edge_index.max())
            if lo < 0 or hi >= num_nodes:
                raise ValueError(f"expected edge_index entries in [0, num_nodes={num_nodes}), "
                                 f"got {lo if lo < 0 else hi}")
        else:
            for row, what, size in ((0, "keys", num_keys), (1, "queries", num_queries)):
                lo, hi = int(edge_index[row].min()), int(edge_index[row].max())
                if lo < 0 or hi >= size:
                    raise ValueError(f"expected edge_index[{row}] ({what}) in [0, {size}), got values in [{lo}, {hi}]")
    return edge_index, num_nodes


_WARNED_RENAMES: set[tuple[str, str]] = set()


def renamed_parameters(**renames: str):
    """Accept the former keyword names of renamed parameters, warning once per name.

    ``@renamed_parameters(block="block_size")`` lets ``f(block=8)`` call ``f(block_size=8)``
    with a ``FutureWarning`` (once per function and name); passing both names is a
    ``TypeError``. The wrapped function keeps its signature (``inspect.signature`` follows
    ``__wrapped__``), so help and the CLI show only the current names.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__qualname__}() got both {old!r} and its new name {new!r}")
                    if (fn.__qualname__, old) not in _WARNED_RENAMES:
                        _WARNED_RENAMES.add((fn.__qualname__, old))
                        warnings.warn(f"{fn.__qualname__}(): the parameter {old!r} is now called {new!r}; "
                                      f"the old name will be removed in graphattn 0.2",
                                      FutureWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.renamed_parameters = dict(renames)
        return wrapper

    return decorate
