"""Any Hugging Face transformers model on any attention graph (the ``hf`` extra: transformers).

Example::

    from functools import partial
    from graphattn import hf, rules

    hf.sparsify(model, partial(rules.longformer, radius=128, global_indices=[0]))

:func:`sparsify` registers graphattn with transformers' own extension points (its
``AttentionInterface`` and ``AttentionMaskInterface``, under the name ``"graphattn"``) and points
the model's self-attention layers at graphs; :func:`unsparsify` restores the previous attention.
"""

from graphattn.hf.attention import IMPLEMENTATION
from graphattn.hf.sparsify import attention_layers, is_sparsified, sparsify, unsparsify

__all__ = ["sparsify", "unsparsify", "is_sparsified", "attention_layers", "IMPLEMENTATION"]
