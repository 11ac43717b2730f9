"""Ready configurations of :class:`~graphattn.models.SparseEncoder`: each sparse-attention system as a
per-layer graph schedule over the one engine.

Graphs depend on the input length, so every factory returns an encoder whose schedule holds
:class:`~graphattn.models.GraphRule` callables (``n -> graph``, cached per length); the
content-based systems (Reformer, Routing) hold attention layers that build their graphs from
the vectors. Extra keyword arguments (``ff_dim``, ``dropout``, ...) go to the encoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from graphattn import rules
from graphattn._random import seed_key
from graphattn._validate import check_bool, check_int, renamed_parameters
from graphattn.models.encoder import GraphRule, SparseEncoder
from graphattn.nn.attention import GraphAttention
from graphattn.nn.lsh import LSHAttention
from graphattn.nn.routing import RoutingAttention

__all__ = [
    "longformer_encoder", "bigbird_encoder", "bigbird_etc_encoder", "etc_encoder",
    "reformer_encoder", "routing_encoder", "MixedAttention", "commitment_loss",
]


def _layer_seeds(seed, num_layers: int) -> list[int]:
    """One int seed per layer: ``seed + l`` (mod 2**64) for an int ``seed``; a generator or None
    (torch's default generator) is drawn from once, at construction, so the model's graphs are
    fixed from then on (a cached graph must not change between calls)."""
    base = seed_key(seed)
    return [(base + l) % (1 << 64) for l in range(num_layers)]


def longformer_encoder(embed_dim: int, num_heads: int, num_layers: int, *, radius: int,
                       dilations: Sequence | None = None, global_indices: Sequence[int] = (),
                       **encoder_kwargs) -> SparseEncoder:
    """Longformer (Beltagy, Peters and Cohan, 2020): layer ``l`` attends a band of ``radius``
    dilated by ``dilations[l]`` plus the ITC global tokens ``global_indices``
    (:func:`rules.longformer`).

    ``dilations[l]`` is an int (every head) or one int per head (the graph then carries a head
    layout: Longformer dilates only some heads of the higher layers). Default: dilation 1 in the
    lower half of the stack and 2 in the upper half, the paper's "small windows below, larger
    receptive fields above" schedule.

    >>> enc = longformer_encoder(8, 2, 2, radius=1, global_indices=[0])
    >>> enc.graphs[1]
    GraphRule(longformer, radius=1, dilation=2, global_indices=(0,))
    >>> enc(torch.randn(12, 8)).shape
    torch.Size([12, 8])
    """
    num_layers = check_int("num_layers", num_layers, minimum=1)
    radius = check_int("radius", radius, minimum=0)
    if dilations is None:
        dilations = [1 if l < num_layers // 2 or num_layers == 1 else 2 for l in range(num_layers)]
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence):
        raise TypeError(f"expected dilations to be a sequence of {num_layers} entries, got {type(dilations).__name__}")
    if len(dilations) != num_layers:
        raise ValueError(f"expected dilations to hold num_layers = {num_layers} entries, got {len(dilations)}")
    dil = [tuple(d) if isinstance(d, Sequence) else d for d in dilations]
    glob = tuple(check_int(f"global_indices[{p}]", i, minimum=0) for p, i in enumerate(global_indices))
    # One GraphRule per distinct dilation, so layers with the same pattern share one cached graph.
    made: dict = {}
    graphs = [made.setdefault(d, GraphRule(rules.longformer, radius=radius, dilation=d, global_indices=glob))
              for d in dil]
    return SparseEncoder(embed_dim, num_heads, graphs=graphs, **encoder_kwargs)


@renamed_parameters(block="block_size", window_blocks="num_window_blocks", random_blocks="num_random_blocks",
                    global_blocks="num_global_blocks")
def bigbird_encoder(embed_dim: int, num_heads: int, num_layers: int, *, block_size: int = 64,
                    num_window_blocks: int = 3, num_random_blocks: int = 3, num_global_blocks: int = 2,
                    seed=None, **encoder_kwargs) -> SparseEncoder:
    """BigBird-ITC (Zaheer et al., 2020): :func:`rules.bigbird` in every layer, with its own
    random blocks per layer (layer ``l`` uses the seed of :func:`_layer_seeds`).

    >>> enc = bigbird_encoder(8, 2, 2, block_size=4, seed=0)
    >>> enc(torch.randn(2, 40, 8)).shape
    torch.Size([2, 40, 8])
    """
    num_layers = check_int("num_layers", num_layers, minimum=1)
    graphs = [GraphRule(rules.bigbird, block_size=block_size, num_window_blocks=num_window_blocks,
                        num_random_blocks=num_random_blocks, num_global_blocks=num_global_blocks, seed=s)
              for s in _layer_seeds(seed, num_layers)]
    return SparseEncoder(embed_dim, num_heads, graphs=graphs, **encoder_kwargs)


@renamed_parameters(block="block_size", window_blocks="num_window_blocks", random_blocks="num_random_blocks")
def bigbird_etc_encoder(embed_dim: int, num_heads: int, num_layers: int, *, block_size: int = 64,
                        num_window_blocks: int = 3, num_random_blocks: int = 3, num_global: int = 2,
                        seed=None, **encoder_kwargs) -> SparseEncoder:
    """BigBird-ETC: :func:`rules.bigbird_etc` (window and random blocks, plus ``num_global``
    appended global nodes that attend and are attended by everything). The encoder owns the
    global nodes' learned embeddings, appends them to the input and drops them from the output.

    >>> enc = bigbird_etc_encoder(8, 2, 1, block_size=4, num_global=2, seed=0)
    >>> out, glob = enc(torch.randn(40, 8), return_global=True)
    >>> out.shape, glob.shape
    (torch.Size([40, 8]), torch.Size([2, 8]))
    """
    num_layers = check_int("num_layers", num_layers, minimum=1)
    num_global = check_int("num_global", num_global, minimum=0)
    graphs = [GraphRule(rules.bigbird_etc, block_size=block_size, num_window_blocks=num_window_blocks,
                        num_random_blocks=num_random_blocks, num_global=num_global, seed=s)
              for s in _layer_seeds(seed, num_layers)]
    return SparseEncoder(embed_dim, num_heads, graphs=graphs, num_global=num_global, **encoder_kwargs)


def etc_encoder(embed_dim: int, num_heads: int, num_layers: int, *, radius: int, num_global: int,
                segments: Sequence[int] | None = None, max_relative: int | None = None,
                **encoder_kwargs) -> SparseEncoder:
    """ETC (Ainslie et al., 2020): global-local attention (:func:`rules.etc`) with relative
    positions. Every edge carries ``g.relative`` (``clip(j - i, -k, k) + k``, and ``2k + 1`` for
    edges between a global node and a token, ``k = max_relative``, default ``radius``); the
    layers are ``GraphAttention(num_relative=2k + 2)``, which adds the learned per-head bias
    ``b[h, relative]`` to each edge's score through the engine's edge bias. ``num_global``
    learned global nodes are appended (and dropped from the output); ``segments`` (global node
    ``s`` summarises segment ``s``) must then sum to the input length.

    >>> enc = etc_encoder(8, 2, 1, radius=2, num_global=2)
    >>> enc(torch.randn(3, 16, 8)).shape
    torch.Size([3, 16, 8])
    """
    radius = check_int("radius", radius, minimum=0)
    k = radius if max_relative is None else check_int("max_relative", max_relative, minimum=0)
    num_global = check_int("num_global", num_global, minimum=0)
    params = dict(num_global=num_global, radius=radius, max_relative=k)
    if segments is not None:
        params["segments"] = tuple(segments)
    return SparseEncoder(embed_dim, num_heads, graphs=GraphRule(rules.etc, **params), num_layers=num_layers,
                         num_relative=2 * k + 2, num_global=num_global, **encoder_kwargs)


def reformer_encoder(embed_dim: int, num_heads: int, num_layers: int, *, num_buckets: int, num_hashes: int = 1,
                     chunk: int | None = None, causal: bool = False, chunked_ff: int | None = 4,
                     reversible: bool = True, seed=None, **encoder_kwargs) -> SparseEncoder:
    """Reformer (Kitaev, Kaiser and Levskaya, ICLR 2020): every layer is
    :class:`graphattn.nn.LSHAttention` (shared-QK angular LSH, ``num_hashes`` rounds,
    ``num_buckets`` buckets, Reformer's sorted chunks of ``chunk`` or exact buckets), the layers
    are reversible residual blocks (``f`` = attention, ``g`` = FFN; input duplicated, streams
    averaged at the end, see :class:`SparseEncoder`) and every FFN runs in ``chunked_ff``
    chunks along the sequence (``None``: unchunked).

    Rotations: layer ``l`` hashes with fixed rotations from its own seed (:func:`_layer_seeds`),
    so the recomputation in the reversible backward pass hashes exactly as the forward did and
    the model is deterministic. (``LSHAttention(seed=None)`` redraws rotations every training
    forward; the reversible sequence replays the RNG, so that works too, but not through this
    factory.)

    >>> enc = reformer_encoder(16, 2, 2, num_buckets=4, chunk=4, seed=0)
    >>> enc(torch.randn(2, 24, 16)).shape
    torch.Size([2, 24, 16])
    """
    num_layers = check_int("num_layers", num_layers, minimum=1)
    dropout = encoder_kwargs.get("dropout", 0.0)
    attentions = [LSHAttention(embed_dim, num_heads, num_buckets=num_buckets, num_hashes=num_hashes, chunk=chunk,
                               causal=causal, seed=s, dropout=dropout) for s in _layer_seeds(seed, num_layers)]
    return SparseEncoder(embed_dim, num_heads, graphs=[None] * num_layers, attentions=attentions,
                         reversible=reversible, chunked_ff=chunked_ff, **encoder_kwargs)


class MixedAttention(nn.Module):
    r"""Routing Transformer attention layer: k-means routing heads mixed with local heads.

    .. math::
        \mathrm{Attn}(x) = \mathrm{GraphAttn}_{h_l}(x, G_{local}) + \mathrm{RoutingAttn}_{h_r}(x)

    ``local_heads = h_l`` heads of :class:`~graphattn.nn.GraphAttention` over the layer's graph
    (a band: ``SparseEncoder`` passes it) and ``h_r = num_heads - local_heads`` heads of
    :class:`~graphattn.nn.RoutingAttention` (balanced spherical k-means with EMA centroids).
    Adding the two output projections is concatenating the heads of both branches and
    projecting (``W_o [a; b] = W_a a + W_b b``): the Routing Transformer's head split (local
    heads and routing heads in one layer). Each branch projects to the full width, so its
    head dimension is ``embed_dim / h`` of that branch. With ``local_heads = 0`` or
    ``num_heads`` only one branch exists.

    ``last_commitment_loss``: the routing branch's commitment loss of the last training
    forward (None otherwise); add it to the training loss (:func:`commitment_loss`).

    Shapes:
        - **x**: ``[N, E]`` or ``[B, N, E]``; **graph**: the local AttentionGraph over ``N`` tokens
        - **output**: like ``x``
    """

    @renamed_parameters(window="cluster_size")
    def __init__(self, embed_dim: int, num_heads: int, *, local_heads: int, num_clusters: int,
                 cluster_size: int | None = None, ema_decay: float = 0.999, commitment: float = 1e-4,
                 causal: bool = False, seed=None, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        self.num_heads = check_int("num_heads", num_heads, minimum=1)
        self.local_heads = check_int("local_heads", local_heads, minimum=0, maximum=num_heads)
        self.causal = check_bool("causal", causal)
        routing_heads = num_heads - self.local_heads
        for name, h in (("local_heads", self.local_heads), ("num_heads - local_heads", routing_heads)):
            if h and embed_dim % h:
                raise ValueError(f"expected embed_dim divisible by {name} (each branch projects to the full "
                                 f"width), got {embed_dim} and {h}")
        self.local = GraphAttention(embed_dim, self.local_heads, dropout=dropout) if self.local_heads else None
        self.routing = RoutingAttention(embed_dim, routing_heads, num_clusters=num_clusters, cluster_size=cluster_size,
                                        ema_decay=ema_decay, commitment=commitment, causal=causal, seed=seed,
                                        dropout=dropout) if routing_heads else None

    def reset_parameters(self) -> None:
        for m in (self.local, self.routing):
            if m is not None:
                m.reset_parameters()

    @property
    def last_commitment_loss(self):
        return None if self.routing is None else self.routing.last_commitment_loss

    def forward(self, x: torch.Tensor, graph) -> torch.Tensor:
        out = None if self.local is None else self.local(x, graph)
        if self.routing is not None:
            routed = self.routing(x)
            out = routed if out is None else out + routed
        return out


@renamed_parameters(window="cluster_size")
def routing_encoder(embed_dim: int, num_heads: int, num_layers: int, *, num_clusters: int, radius: int,
                    local_heads: int | None = None, cluster_size: int | None = None, ema_decay: float = 0.999,
                    commitment: float = 1e-4, causal: bool = False, seed=None, **encoder_kwargs) -> SparseEncoder:
    """Routing Transformer (Roy et al., TACL 2021): every layer's attention is a
    :class:`MixedAttention` of ``local_heads`` (default half the heads) local heads over a band
    of ``radius`` (causal when ``causal``) and ``num_heads - local_heads`` routing heads with
    ``num_clusters`` clusters. Add :func:`commitment_loss` of the encoder to the training loss.

    >>> enc = routing_encoder(16, 4, 2, num_clusters=3, radius=2, seed=0)
    >>> enc(torch.randn(2, 24, 16)).shape
    torch.Size([2, 24, 16])
    """
    num_layers = check_int("num_layers", num_layers, minimum=1)
    num_heads = check_int("num_heads", num_heads, minimum=1)
    local_heads = num_heads // 2 if local_heads is None else local_heads
    causal = check_bool("causal", causal)
    dropout = encoder_kwargs.get("dropout", 0.0)
    attentions = [MixedAttention(embed_dim, num_heads, local_heads=local_heads, num_clusters=num_clusters,
                                 cluster_size=cluster_size, ema_decay=ema_decay, commitment=commitment, causal=causal,
                                 seed=s, dropout=dropout) for s in _layer_seeds(seed, num_layers)]
    band = GraphRule(rules.band, radius=check_int("radius", radius, minimum=0), causal=causal)
    return SparseEncoder(embed_dim, num_heads, graphs=band, num_layers=num_layers, attentions=attentions,
                         **encoder_kwargs)


def commitment_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the ``last_commitment_loss`` of every routing layer in ``model`` (their last
    training forward), or None when there is none."""
    losses = [m.last_commitment_loss for m in model.modules()
              if isinstance(m, RoutingAttention) and m.last_commitment_loss is not None]
    return sum(losses) if losses else None
