"""Fused Triton kernels for exact graph attention over a tiling plan (the GPU backend).

The kernels consume the engine's :class:`~graphattn.nn.plan.TilingPlan`:

- **dense tiles** (band, block, global, BigBird, Longformer, sorted buckets): one program per
  (query block, head) loops over the block's key tiles; a tile whose cells are all edges runs
  without a mask, a partial tile reads its in-tile edge bitmap; scores stay in registers and
  the softmax runs online (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022), so no
  score ever reaches global memory;
- **sparse edges** (graphs without locality: random, GNN graphs): one program per
  (query row, head) gathers its neighbours' keys and values in chunks, continuing the row's
  online softmax from the dense part's state.

The backward is flash attention's: probabilities are recomputed from the forward's
log-sum-exp and ``dS = P * (dP - rowsum(dO * O))``; dQ runs per query block / row, dK and dV
per key block / key row (the plan's transposed tile list and CSR), so there are no atomics and
the gradients are deterministic. A block or row with more than ``_MAX_TILES`` tiles or
``_MAX_CHUNKS`` neighbour chunks (global tokens, hub nodes) is split into segments that run in
parallel and are merged by the log-sum-exp rule (forward) or summed (backward), as
flash-decoding splits long key ranges, so one global row does not serialise the whole call.

Edge biases (``[E, H]``, gathered through a cell -> edge id map), per-head edge sets,
bipartite graphs (``Nq != Nk``), queries without keys (zeros, never NaN) and dropout (the
torch engine's keep-mask, bit for bit) behave as in the torch engine. fp32, bf16 and fp16
inputs; accumulation in fp32 (fp32 matmuls in IEEE precision, never TF32); as in flash
attention, half-precision probabilities and ``dS`` are rounded to the input dtype before their
matmuls. The output has the input dtype.

Triton is optional: this module imports without it, and :func:`triton_available` /
:func:`triton_unavailable_reason` say whether the kernels can load. On CPU tensors the kernels
run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is first
imported), which is how the test suite checks them without a GPU; :mod:`graphattn.nn.triton.aot`
compiles them for a GPU architecture without one (registers, spills, shared memory, tensor
cores), which is where the launch configuration (:func:`_dense_config`) comes from.

>>> isinstance(triton_available(), bool)
True
"""

from __future__ import annotations

from graphattn.nn.triton.attention import FusedGraphAttention, fused_attention
from graphattn.nn.triton.launch import unavailable_reason
from graphattn.nn.triton.runtime import interpreted, triton_available, triton_unavailable_reason

__all__ = ["triton_available", "triton_unavailable_reason", "interpreted", "unavailable_reason",
           "fused_attention", "FusedGraphAttention"]
