"""Models built from attention graphs and the graph-attention engine: the sparse encoder and
its ready configurations (Longformer, BigBird, ETC, Reformer, Routing), the Star-Transformer
and BP-Transformer classifiers, BigBird's encoder-decoder, and decoder-only language models
over causal graphs; padded batches everywhere, incremental decoding and generation."""

from graphattn.models.bpt import BPTransformerClassifier
from graphattn.models.decoder import BPTDecoder, SparseDecoder
from graphattn.models.decoding import (CausalRule, DecoderCache, beam_search, greedy_search, row_attention,
                                       search)
from graphattn.models.configs import (MixedAttention, bigbird_encoder, bigbird_etc_encoder, commitment_loss,
                                      etc_encoder, longformer_encoder, reformer_encoder, routing_encoder)
from graphattn.models.encoder import FeedForward, GraphRule, SinusoidalPositions, SparseEncoder, SparseEncoderLayer
from graphattn.models.seq2seq import DecoderLayer, EncoderDecoder, cross_edge_index, ragged_cross_edge_index
from graphattn.models.star import StarTransformerClassifier

__all__ = [
    "SparseEncoder", "SparseEncoderLayer", "FeedForward", "GraphRule", "SinusoidalPositions",
    "longformer_encoder", "bigbird_encoder", "bigbird_etc_encoder", "etc_encoder", "reformer_encoder",
    "routing_encoder", "MixedAttention", "commitment_loss",
    "StarTransformerClassifier", "BPTransformerClassifier",
    "EncoderDecoder", "DecoderLayer", "cross_edge_index", "ragged_cross_edge_index",
    "SparseDecoder", "BPTDecoder", "CausalRule", "DecoderCache", "row_attention",
    "greedy_search", "beam_search", "search",
]
