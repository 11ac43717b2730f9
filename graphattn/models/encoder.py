"""A transformer encoder whose layer ``l`` attends over its own attention graph.

Every sparse-attention system (Longformer, BigBird, ETC, Reformer, Routing) is
this one stack with a different per-layer graph schedule (:mod:`graphattn.models.configs`):
the attention is always :class:`~graphattn.nn.GraphAttention` over a graph from
:mod:`graphattn.rules`, or a content-based layer (LSH, routing) that builds its graph from the
vectors and runs the same engine.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

from graphattn._validate import check_bool, check_features, check_float, check_int
from graphattn.compose import batch
from graphattn.graph import AttentionGraph
from graphattn.models._ragged import check_mask, lru_get, ragged_mask
from graphattn.nn.attention import GraphAttention
from graphattn.nn.reversible import ReversibleSequence, chunked_feed_forward

__all__ = ["FeedForward", "GraphRule", "SinusoidalPositions", "SparseEncoderLayer", "SparseEncoder"]

_CACHE_SIZE = 16  # graphs kept per encoder: one per (schedule entry, length, device)


class GraphRule:
    """A picklable callable ``n -> AttentionGraph``: ``GraphRule(rule, **params)(n)`` is
    ``rule(n, **params)``. Per-layer schedules use it so that a model holds no lambdas.

    >>> from graphattn import rules
    >>> GraphRule(rules.band, radius=1)(4).num_edges
    10
    >>> GraphRule(rules.band, radius=1)
    GraphRule(band, radius=1)
    """

    def __init__(self, rule: Callable[..., AttentionGraph], **params):
        if not callable(rule):
            raise TypeError(f"expected rule to be callable, got {type(rule).__name__}")
        self.rule = rule
        self.params = params

    def __call__(self, n: int) -> AttentionGraph:
        return self.rule(n, **self.params)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"GraphRule({getattr(self.rule, '__name__', repr(self.rule))}{args})"


class SinusoidalPositions(nn.Module):
    r"""Fixed sinusoidal position encodings (Vaswani et al., 2017), an ``nn.Embedding``-like
    lookup ``positions -> [..., E]``:

    .. math::
        \mathrm{PE}_{p, 2i} = c \sin(p\, \omega_i), \quad \mathrm{PE}_{p, 2i+1} = c \cos(p\, \omega_i),
        \quad \omega_i = 10000^{-2i/E}, \quad c = \sqrt{2 / E}

    (``c`` gives every row unit norm, the scale of the models' token embeddings). The encoding
    of ``p + d`` is a fixed rotation of that of ``p``, so an attention score can depend on the
    offset ``d`` through the query/key projections alone: a model reads relative positions off
    absolute ones, at every length up to ``max_len``, with nothing to learn.

    Shapes:
        - **positions**: int ``[...]`` in ``[0, max_len)`` -> ``[..., E]``

    >>> pe = SinusoidalPositions(16, 4)
    >>> pe(torch.tensor([0, 3])).shape, round(float(pe(torch.tensor(5)).norm()), 6)
    (torch.Size([2, 4]), 1.0)
    """

    def __init__(self, max_len: int, embed_dim: int):
        super().__init__()
        self.max_len = check_int("max_len", max_len, minimum=1)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        half = (embed_dim + 1) // 2
        omega = torch.pow(10000.0, -2.0 * torch.arange(half, dtype=torch.float64) / embed_dim)
        angle = torch.arange(max_len, dtype=torch.float64)[:, None] * omega
        table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(max_len, 2 * half)[:, :embed_dim]
        self.register_buffer("weight", (table * math.sqrt(2.0 / embed_dim)).float(), persistent=False)

    def reset_parameters(self) -> None:
        """Nothing to learn."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.weight[positions]

    def extra_repr(self) -> str:
        return f"{self.max_len}, {self.embed_dim}"


class FeedForward(nn.Module):
    r"""Position-wise feed-forward network (Vaswani et al., 2017):
    :math:`\mathrm{FFN}(x) = W_2\,\mathrm{Dropout}(\mathrm{GELU}(W_1 x + b_1)) + b_2`.

    Args:
        embed_dim: input and output width ``E``.
        ff_dim: hidden width (default ``4 * embed_dim``).
        dropout: dropout on the hidden activations (training only).

    Shapes:
        - **x**: ``[..., E]`` -> ``[..., E]``
    """

    def __init__(self, embed_dim: int, ff_dim: int | None = None, *, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.ff_dim = 4 * embed_dim if ff_dim is None else check_int("ff_dim", ff_dim, minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self.lin1 = nn.Linear(self.embed_dim, self.ff_dim)
        self.lin2 = nn.Linear(self.ff_dim, self.embed_dim)
        self.drop = nn.Dropout(self.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin1, self.lin2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.drop(nn.functional.gelu(self.lin1(x))))


class SparseEncoderLayer(nn.Module):
    r"""Pre-norm transformer encoder layer over an attention graph:

    .. math::
        x' = x + \mathrm{Dropout}(\mathrm{Attn}(\mathrm{LN}_1(x), G)), \qquad
        y = x' + \mathrm{Dropout}(\mathrm{FFN}(\mathrm{LN}_2(x')))

    Pre-norm (Xiong et al., 2020, "On Layer Normalization in the Transformer Architecture"):
    the residual path is an identity, so deep stacks train without warm-up, and the two
    sublayers ``f = Dropout(Attn(LN_1(.)))`` and ``g = Dropout(FFN(LN_2(.)))`` are exactly the
    functions a reversible residual block needs (:meth:`attention_block`, :meth:`ff_block`).

    Args:
        embed_dim, num_heads: width ``E`` and heads ``H``.
        ff_dim: FFN hidden width (default ``4 * E``).
        dropout: dropout on the sublayer outputs, the FFN hidden units and the attention weights.
        num_relative: relative-position vocabulary of the default attention (ETC, BPT).
        attention: the attention module. Default ``GraphAttention(E, H, dropout, num_relative)``,
            called as ``attention(h, graph)``. A content-based module (``LSHAttention``,
            ``RoutingAttention``) builds its own graph and is called as ``attention(h)`` when the
            layer gets ``graph=None``.
        chunked_ff: apply the FFN in this many chunks along the sequence
            (:func:`graphattn.nn.chunked_feed_forward`; Reformer), identical results.

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]``; **graph**: AttentionGraph over ``N`` nodes or None
        - **output**: like ``x``
    """

    def __init__(self, embed_dim: int, num_heads: int, *, ff_dim: int | None = None,
                 dropout: float = 0.0, num_relative: int | None = None,
                 attention: nn.Module | None = None, chunked_ff: int | None = None):
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        self.chunked_ff = None if chunked_ff is None else check_int("chunked_ff", chunked_ff, minimum=1)
        if attention is None:
            attention = GraphAttention(embed_dim, num_heads, dropout=dropout, num_relative=num_relative)
        elif not isinstance(attention, nn.Module):
            raise TypeError(f"expected attention to be an nn.Module or None, got {type(attention).__name__}")
        self.attn = attention
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ff = FeedForward(embed_dim, ff_dim, dropout=dropout)
        self.drop = nn.Dropout(self.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.attn, self.ff):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()

    def attention_block(self, x: torch.Tensor, graph: AttentionGraph | None) -> torch.Tensor:
        """``Dropout(Attn(LN_1(x), graph))``; ``graph=None`` for a content-based attention."""
        h = self.norm1(x)
        out = self.attn(h) if graph is None else self.attn(h, graph)
        return self.drop(out)

    def ff_block(self, x: torch.Tensor) -> torch.Tensor:
        """``Dropout(FFN(LN_2(x)))``, chunked along the sequence when ``chunked_ff`` is set."""
        h = self.norm2(x)
        if self.chunked_ff is None:
            out = self.ff(h)
        else:
            out = chunked_feed_forward(self.ff, h, chunks=self.chunked_ff, dim=-2)
        return self.drop(out)

    def forward(self, x: torch.Tensor, graph: AttentionGraph | None = None) -> torch.Tensor:
        x = x + self.attention_block(x, graph)
        return x + self.ff_block(x)


class _Sublayer(nn.Module):
    """One half of a layer: ``fn(x)`` with the graph bound when the block was made, so a
    reversible backward pass recomputes exactly the function of the forward pass.

    ``groups`` (ragged batches through an attention that is not a plain GraphAttention, such as
    LSH, routing or the mixed routing/local layer, which take ``[B, n, E]`` and would mix the
    samples of a union): one ``(node ids [B_g, n_g], graph of length n_g or None)`` per
    distinct sample length; the attention runs once per group and its outputs are scattered
    back to the node rows."""

    def __init__(self, layer: SparseEncoderLayer, graph: AttentionGraph | None, attention: bool,
                 groups: list[tuple[torch.Tensor, AttentionGraph | None]] | None = None):
        super().__init__()
        self.layer = layer
        self.graph = graph
        self.attention = attention
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.attention:
            return self.layer.ff_block(x)
        if self.groups is None:
            return self.layer.attention_block(x, self.graph)
        out = torch.zeros_like(x)
        routing, losses = _routing_modules(self.layer), []
        for idx, graph in self.groups:
            out = out.index_put((idx,), self.layer.attention_block(x[idx], graph))
            losses.append([(m.last_commitment_loss, idx.numel()) for m in routing])
        # Routing layers keep the commitment loss of their last call: make it the token-weighted
        # mean over the groups, i.e. the mean over every real token as one call would give.
        total = sum(idx.numel() for idx, _ in self.groups)
        for r, m in enumerate(routing):
            parts = [group[r] for group in losses]
            if all(loss is not None for loss, _ in parts):
                m.last_commitment_loss = sum(loss * (count / total) for loss, count in parts)
        return out


def _routing_modules(layer: nn.Module) -> list:
    from graphattn.nn.routing import RoutingAttention

    return [m for m in layer.modules() if isinstance(m, RoutingAttention)]


def _is_entry(g) -> bool:
    return g is None or isinstance(g, AttentionGraph) or callable(g)


class SparseEncoder(nn.Module):
    r"""Transformer encoder stack whose layer ``l`` attends over ``graphs[l]``.

    A per-layer schedule (Longformer: plain bands in lower layers, dilated bands higher up),
    pre-norm layers (:class:`SparseEncoderLayer`) and a final LayerNorm.

    **Graphs.** ``graphs`` is one entry for every layer or a sequence of ``num_layers``
    entries. An entry is

    * an :class:`~graphattn.AttentionGraph` (fixed length),
    * a callable ``n -> AttentionGraph`` (e.g. :class:`GraphRule`), evaluated on the input
      length ``n`` (tokens, without global nodes) and cached per (entry, length, device): a
      training loop builds each graph, and its tiling plan, once;
    * ``None``: the layer's attention is content-based (LSH, routing) and builds its own graph.

    A graph must have ``n + num_global`` nodes. Layers sharing one entry share one cached graph.

    **Global nodes** (ETC, BigBird-ETC). With ``num_global = g > 0`` the encoder owns ``g``
    learned embeddings, appends them after the ``n`` tokens (as nodes ``n .. n+g-1``, the
    numbering of :func:`rules.etc` and :func:`rules.bigbird_etc`), runs the layers over the
    ``n + g`` nodes and drops them from the output (``return_global=True`` returns them too).

    **Reversible residuals** (Reformer; Gomez et al., 2017). With ``reversible=True`` the layers
    run as a :class:`graphattn.nn.ReversibleSequence` of blocks ``(f_l, g_l)`` with ``f_l`` the
    attention sublayer and ``g_l`` the FFN sublayer of layer ``l``:
    ``y1 = x1 + f(x2), y2 = x2 + g(y1)``. As in Reformer (trax ``ReformerLM``), the input is
    duplicated (``x1 = x2 = x``) and the two streams are averaged at the end
    (``(y1 + y2) / 2``) before the final LayerNorm. Activations are recomputed in the backward
    pass, so memory does not grow with depth. This is a different function from the plain
    stack (two streams), with the same parameters.

    **Chunked FFN** (Reformer). ``chunked_ff = c`` applies every FFN in ``c`` chunks along the
    sequence (identical results, ``1/c`` of the hidden activations alive at once).

    **Padded batches.** ``forward(x, attention_mask=mask)`` with ``mask [B, N]`` (bool, or 0/1
    integers; true at real positions, anywhere in a row) runs every sample at its own length
    ``n_b``: each layer attends over the disjoint union of the per-sample graphs (each built
    for ``n_b`` tokens plus the sample's own global nodes, random rules included; cached per
    tuple of lengths), one engine call for the whole batch. A padded position is never
    attended, its output is zero, and each sample's output equals what it gives alone. An
    attention that is not a :class:`~graphattn.nn.GraphAttention` (LSH, routing, the mixed
    routing/local layer: they take ``[B, n, E]``) runs once per distinct length on the samples
    of that length; a routing layer's commitment loss is then the token-weighted mean over
    those calls, but its centroids take one EMA step per call.

    Args:
        embed_dim, num_heads: width ``E`` and heads ``H``.
        graphs: one entry or ``num_layers`` entries, as above.
        num_layers: depth; required when ``graphs`` is a single entry.
        ff_dim, dropout, num_relative: as in :class:`SparseEncoderLayer`.
        num_global: learned global nodes appended to the input.
        reversible, chunked_ff: Reformer's memory savers, as above.
        attentions: optional per-layer attention modules (``None`` entries get the default
            GraphAttention), e.g. ``LSHAttention`` layers with ``graphs=None``.

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]``; **attention_mask** (optional): ``x.shape[:-1]``
        - **output**: like ``x``; with ``return_global=True`` also the global nodes'
          states ``[num_global, E]`` or ``[B, num_global, E]``

    >>> from graphattn import rules
    >>> enc = SparseEncoder(8, 2, graphs=[GraphRule(rules.band, radius=1),
    ...                                   GraphRule(rules.dilated, radius=1, dilation=2)])
    >>> enc(torch.randn(3, 10, 8)).shape
    torch.Size([3, 10, 8])
    """

    def __init__(self, embed_dim: int, num_heads: int, *, graphs, num_layers: int | None = None,
                 ff_dim: int | None = None, dropout: float = 0.0, num_relative: int | None = None,
                 num_global: int = 0, reversible: bool = False, chunked_ff: int | None = None,
                 attentions: Sequence[nn.Module | None] | None = None):
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.num_global = check_int("num_global", num_global, minimum=0)
        self.reversible = check_bool("reversible", reversible)
        self.dropout = check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if _is_entry(graphs):
            if num_layers is None:
                raise ValueError("expected num_layers when graphs is a single graph or callable, got None")
            num_layers = check_int("num_layers", num_layers, minimum=1)
            entries = [graphs] * num_layers
        elif isinstance(graphs, Sequence) and not isinstance(graphs, (str, bytes)):
            entries = list(graphs)
            if not entries:
                raise ValueError("expected graphs to hold at least one layer's graph, got an empty sequence")
            if num_layers is not None and check_int("num_layers", num_layers, minimum=1) != len(entries):
                raise ValueError(f"expected num_layers = len(graphs) = {len(entries)}, got {num_layers}")
            for p, g in enumerate(entries):
                if not _is_entry(g):
                    raise TypeError(f"expected graphs[{p}] to be an AttentionGraph, a callable n -> "
                                    f"AttentionGraph or None, got {type(g).__name__}")
        else:
            raise TypeError("expected graphs to be an AttentionGraph, a callable n -> AttentionGraph, "
                            f"None, or a sequence of these, got {type(graphs).__name__}")
        self.num_layers = len(entries)
        if attentions is None:
            attentions = [None] * self.num_layers
        attentions = list(attentions)
        if len(attentions) != self.num_layers:
            raise ValueError(f"expected attentions to hold num_layers = {self.num_layers} entries, "
                             f"got {len(attentions)}")
        for p, (g, a) in enumerate(zip(entries, attentions)):
            if g is None and a is None:
                raise ValueError(f"expected graphs[{p}] (None means a content-based attention) to come "
                                 f"with attentions[{p}], got neither a graph nor an attention module")
        # Entries are deduplicated by identity so layers that share one callable share one graph.
        self._entries: list = []
        self._layer_entry: list[int] = []
        for g in entries:
            ids = [i for i, e in enumerate(self._entries) if e is g]
            if ids:
                self._layer_entry.append(ids[0])
            else:
                self._layer_entry.append(len(self._entries))
                self._entries.append(g)
        self._graph_cache: OrderedDict = OrderedDict()
        self._batch_cache: OrderedDict = OrderedDict()  # (entry, lengths, device) -> union graph
        self.layers = nn.ModuleList(
            SparseEncoderLayer(embed_dim, num_heads, ff_dim=ff_dim, dropout=dropout,
                               num_relative=num_relative, attention=a, chunked_ff=chunked_ff)
            for a in attentions)
        self.global_embeddings = nn.Parameter(torch.empty(self.num_global, embed_dim)) if self.num_global else None
        self.norm = nn.LayerNorm(embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        if self.global_embeddings is not None:
            nn.init.normal_(self.global_embeddings, std=0.02)
        self.norm.reset_parameters()

    @property
    def graphs(self) -> list:
        """The per-layer schedule entries (graphs, callables or None)."""
        return [self._entries[i] for i in self._layer_entry]

    def graph(self, layer: int, n: int, device=None) -> AttentionGraph | None:
        """The graph layer ``layer`` attends over for ``n`` input tokens (cached)."""
        layer = check_int("layer", layer, minimum=0, maximum=self.num_layers - 1)
        n = check_int("n", n, minimum=0)
        device = torch.device("cpu") if device is None else torch.device(device)
        idx = self._layer_entry[layer]
        entry = self._entries[idx]
        if entry is None:
            return None
        key = (idx, n, str(device))
        g = self._graph_cache.get(key)
        if g is not None:
            self._graph_cache.move_to_end(key)
            return g
        g = entry if isinstance(entry, AttentionGraph) else entry(n)
        if not isinstance(g, AttentionGraph):
            raise TypeError(f"expected graphs[{layer}]({n}) to return an AttentionGraph, got {type(g).__name__}")
        want = n + self.num_global
        if g.num_nodes != want:
            raise ValueError(f"expected graphs[{layer}] over n + num_global = {n} + {self.num_global} = "
                             f"{want} nodes, got {g.num_nodes}")
        if g.device != device:
            g = g.to(device)
        self._graph_cache[key] = g
        if len(self._graph_cache) > _CACHE_SIZE:
            self._graph_cache.popitem(last=False)
        return g

    def batched_graph(self, layer: int, lengths, device=None) -> tuple[AttentionGraph | None, torch.Tensor]:
        """``(graph, ptr)``: the disjoint union of layer ``layer``'s graphs for a batch of
        samples of ``lengths`` tokens (sample ``b`` owns nodes ``ptr[b]:ptr[b+1]``: its tokens,
        then its global nodes); cached per (schedule entry, lengths, device). The graph is None
        for a content-based layer."""
        layer = check_int("layer", layer, minimum=0, maximum=self.num_layers - 1)
        device = torch.device("cpu") if device is None else torch.device(device)
        lengths = tuple(int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths))
        idx = self._layer_entry[layer]
        if self._entries[idx] is None:
            sizes = torch.tensor([0] + [n + self.num_global for n in lengths], device=device)
            return None, torch.cumsum(sizes, 0)

        def make():
            return batch([self.graph(layer, n, device) for n in lengths])

        return lru_get(self._batch_cache, (idx, lengths, str(device)), make, _CACHE_SIZE)

    def forward(self, x: torch.Tensor, *, attention_mask: torch.Tensor | None = None, return_global: bool = False):
        _, batched = check_features(x, self.embed_dim)
        return_global = check_bool("return_global", return_global)
        if attention_mask is None:
            return self._run(x, return_global)
        mask = check_mask(attention_mask, x.shape[:-1])
        if not batched:
            out = self.forward(x[None], attention_mask=mask[None], return_global=return_global)
            return tuple(o[0] for o in out) if return_global else out[0]
        r = ragged_mask(mask)
        lengths = r.lengths.tolist()
        if len(set(lengths)) == 1:  # one length: the shared-graph batched path on the real rows
            n = lengths[0]
            out = self._run(x[mask].view(x.shape[0], n, x.shape[-1]), return_global)
            tokens, glob = out if return_global else (out, None)
            tokens = r.scatter(tokens.reshape(-1, x.shape[-1]))
            return (tokens, glob) if return_global else tokens
        nodes, glob_nodes, layer_args = self._ragged_nodes(r, x.device)
        h = torch.zeros(int(nodes[-1]), x.shape[-1], dtype=x.dtype, device=x.device)
        tok_nodes = nodes[:-1][r.sample] + r.position
        h = h.index_put((tok_nodes,), x[mask])
        if self.global_embeddings is not None:
            glob = self.global_embeddings.to(x.dtype).expand(x.shape[0], -1, -1)
            h = h.index_put((glob_nodes,), glob)
        h = self._layers(h, layer_args)
        tokens = r.scatter(h[tok_nodes])
        return (tokens, h[glob_nodes]) if return_global else tokens

    def _ragged_nodes(self, r, device):
        """Node offsets of the union (per sample: tokens, then global nodes), the global nodes'
        ids ``[B, num_global]`` and each layer's (graph, groups) for :meth:`_layers`."""
        lengths = r.lengths.tolist()
        nodes = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=device)
        torch.cumsum(r.lengths.to(device) + self.num_global, 0, out=nodes[1:])
        args = []
        for l, layer in enumerate(self.layers):
            if isinstance(layer.attn, GraphAttention) and self.graphs[l] is not None:
                args.append((self.batched_graph(l, lengths, device)[0], None))
            else:
                args.append((None, [(idx, self.graph(l, n, device)) for n, idx in self._groups(r.lengths, nodes)]))
        glob_nodes = nodes[:-1, None] + r.lengths[:, None] + torch.arange(self.num_global, device=device)
        return nodes, glob_nodes, args

    def _groups(self, lengths: torch.Tensor, nodes: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """``(n, node ids [B_g, n + num_global])`` of the samples of each distinct length ``n``."""
        groups = []
        for n in torch.unique(lengths).tolist():
            members = torch.nonzero(lengths == n).flatten()
            groups.append((n, nodes[members][:, None] + torch.arange(n + self.num_global, device=nodes.device)))
        return groups

    def _run(self, x: torch.Tensor, return_global: bool):
        """The encoder on ``x [N, E]`` or ``[B, N, E]``: every sample of length ``N``."""
        n = x.shape[-2]
        if self.global_embeddings is not None:
            glob = self.global_embeddings.to(x.dtype)
            glob = glob.expand(x.shape[0], -1, -1) if x.dim() == 3 else glob
            x = torch.cat([x, glob], dim=-2)
        x = self._layers(x, [(self.graph(l, n, x.device), None) for l in range(self.num_layers)])
        tokens = x[..., :n, :]
        if return_global:
            return tokens, x[..., n:, :]
        return tokens

    def _layers(self, x: torch.Tensor, layer_args) -> torch.Tensor:
        """The layers (plain or reversible) and the final norm; ``layer_args[l] = (graph,
        groups)``."""
        blocks = [(_Sublayer(layer, g, True, groups), _Sublayer(layer, g, False))
                  for layer, (g, groups) in zip(self.layers, layer_args)]
        if self.reversible:
            y1, y2 = ReversibleSequence(blocks)(x, x)
            x = (y1 + y2) / 2
        else:
            for f, g in blocks:
                x = x + f(x)
                x = x + g(x)
        return self.norm(x)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, num_global={self.num_global}, reversible={self.reversible}, "
                f"graphs={self.graphs!r}")
