"""Attention layers and functions over attention graphs."""

from graphattn.nn import functional
from graphattn.nn.attention import GraphAttention
from graphattn.nn.functional import graph_attention
from graphattn.nn.plan import TilingPlan, build_plan

__all__ = ["functional", "graph_attention", "GraphAttention", "TilingPlan", "build_plan"]
