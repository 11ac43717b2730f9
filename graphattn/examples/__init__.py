"""Worked examples shared by the notebooks and the tests: each module has a ``train(...)`` that
returns a dict of metrics.

- :mod:`graphattn.examples.karate`: node classification on Zachary's karate club (PyG's built-in
  ``KarateClub``, no download) with a local GCN plus expander / virtual-node attention.
- :mod:`graphattn.examples.long_range`: an Exphormer-style model on a synthetic long-range task
  where local message passing cannot reach the information.
"""

from graphattn.examples import karate, long_range
from graphattn.examples.models import SparseGPSNet

__all__ = ["karate", "long_range", "SparseGPSNet"]
