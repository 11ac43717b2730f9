"""Attention layers and functions over attention graphs."""

from graphattn.nn import functional
from graphattn.nn.attention import GraphAttention
from graphattn.nn.functional import graph_attention
from graphattn.nn.plan import TilingPlan, build_plan
from graphattn.nn.gps import SparseGPSConv

__all__ = ["functional", "graph_attention", "GraphAttention", "TilingPlan", "build_plan", "SparseGPSConv"]

from graphattn.nn.lsh import LSHAttention  # noqa: E402
from graphattn.nn.reversible import ReversibleSequence, chunked_feed_forward  # noqa: E402
from graphattn.nn.routing import RoutingAttention  # noqa: E402

__all__ += ["LSHAttention", "RoutingAttention", "ReversibleSequence", "chunked_feed_forward"]

from graphattn.nn import backends  # noqa: E402
from graphattn.nn.backends import Backend  # noqa: E402

__all__ += ["backends", "Backend"]
