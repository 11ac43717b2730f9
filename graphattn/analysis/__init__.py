"""Analysis of attention graphs: size, reach, universal-approximation conditions, spectra,
attention recall against dense softmax, and edge-count scaling.

Each function cites its theory in its docstring; the modules are
:mod:`~graphattn.analysis.structure` (summary, hops_to_cover, receptive_field, contains_star,
yun_conditions), :mod:`~graphattn.analysis.spectrum` (spectral), :mod:`~graphattn.analysis.recall`
(attention_recall, topk_recall, output_error) and :mod:`~graphattn.analysis.growth` (scaling).
The modules are not named after the functions, so ``graphattn.analysis.spectral`` is always
the function.
"""

from graphattn.analysis.recall import attention_recall, output_error, topk_recall
from graphattn.analysis.growth import scaling
from graphattn.analysis.spectrum import spectral
from graphattn.analysis.structure import contains_star, hops_to_cover, receptive_field, summary, yun_conditions

__all__ = [
    "summary", "hops_to_cover", "receptive_field", "contains_star", "yun_conditions",
    "spectral",
    "attention_recall", "topk_recall", "output_error",
    "scaling",
]
