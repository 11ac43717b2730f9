"""Attention layers and functions over attention graphs.

:func:`graph_attention` is the exact engine (any graph, edge biases, per-head layouts,
cross-attention, repeated edges, a differentiable log-sum-exp); :func:`merge_attention` composes
partial attentions over disjoint key sets. Layers follow PyG's convolution layout.
:mod:`graphattn.nn.backends` chooses the implementation (torch engine, Triton kernels,
FlexAttention, or a registered one).
"""

from graphattn.nn import backends, functional
from graphattn.nn.attention import GraphAttention
from graphattn.nn.backends import Backend
from graphattn.nn.functional import graph_attention, merge_attention
from graphattn.nn.gps import SparseGPSConv
from graphattn.nn.lsh import LSHAttention
from graphattn.nn.plan import TilingPlan, build_plan
from graphattn.nn.reversible import ReversibleSequence, chunked_feed_forward
from graphattn.nn.routing import RoutingAttention

__all__ = ["functional", "graph_attention", "merge_attention", "GraphAttention", "TilingPlan", "build_plan",
           "SparseGPSConv", "LSHAttention", "RoutingAttention", "ReversibleSequence", "chunked_feed_forward",
           "backends", "Backend"]
