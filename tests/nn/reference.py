"""The float64 dense oracle for the tests lives in the package (graphattn.nn.reference)."""

from graphattn.nn.reference import dense_attention, dense_bias, dense_mask  # noqa: F401
