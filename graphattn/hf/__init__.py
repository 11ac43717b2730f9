"""Any Hugging Face transformers model on any attention graph (the ``hf`` extra: transformers).

Example::

    from functools import partial
    from graphattn import hf, rules

    hf.extend_positions(model, 4096, tokenizer=tokenizer)  # learned positions: copies
    hf.sparsify(model, partial(rules.longformer, radius=128, global_indices=[0]))

:func:`sparsify` registers graphattn with transformers' own extension points (its
``AttentionInterface`` and ``AttentionMaskInterface``, under the name ``"graphattn"``) and points
the model's self-attention layers at graphs; :func:`unsparsify` restores the previous attention.
:func:`extend_positions` makes a model with learned absolute positions longer by copying them.
"""

from graphattn.hf.attention import IMPLEMENTATION
from graphattn.hf.positions import extend_positions
from graphattn.hf.sparsify import attention_layers, is_sparsified, sparsify, unsparsify

__all__ = ["sparsify", "unsparsify", "is_sparsified", "attention_layers", "extend_positions", "IMPLEMENTATION"]
