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
imported), which is how the test suite checks them without a GPU; :mod:`graphattn.nn.triton_aot`
compiles them for a GPU architecture without one (registers, spills, shared memory, tensor
cores), which is where the launch configuration (:func:`_dense_config`) comes from.

>>> isinstance(triton_available(), bool)
True
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import torch

from graphattn.nn._tiles import dense_edge_map, dense_tiles
from graphattn.nn.plan import TilingPlan

__all__ = ["triton_available", "triton_unavailable_reason", "interpreted", "unavailable_reason",
           "fused_attention", "FusedGraphAttention"]

_LOG2E = 1.4426950408889634
_M32 = 0xFFFFFFFF
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_TILE, _MAX_DIM = 128, 256
_LN2 = 0.6931471805599453
# A work item walks at most this many dense tiles / sparse chunks; longer blocks and rows are split.
_MAX_TILES, _MAX_CHUNKS = 32, 32

_impl = None
_import_error: str | None = None
_checked = False


def _check_import() -> str | None:
    """Import triton once (not the kernels); remember why when that fails."""
    global _checked, _import_error
    if not _checked:
        _checked = True
        try:
            import triton  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _import_error = f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return _import_error


def _kernels():
    """The kernel module, defined on first use: Triton picks interpreter or compiled mode when a
    kernel is defined, from ``TRITON_INTERPRET`` at that moment."""
    global _impl
    if _impl is None:
        why = _check_import()
        if why:
            raise RuntimeError(why)
        import triton.language.standard as std
        from triton.runtime.interpreter import InterpretedFunction

        from graphattn.nn import _triton_jit

        mine, theirs = (isinstance(f, InterpretedFunction) for f in (_triton_jit._dense_fwd, std.sum))
        if mine != theirs:  # triton's own jit functions were defined in the other mode
            raise RuntimeError(
                f"triton was imported with TRITON_INTERPRET={'1' if theirs else 'unset'} and the kernels "
                f"are defined with TRITON_INTERPRET={'1' if mine else 'unset'}: set TRITON_INTERPRET "
                f"before triton is first imported in the process")
        _impl = _triton_jit
    return _impl


def triton_available() -> bool:
    """Whether ``triton`` is installed and imports (the kernels themselves load on first use)."""
    return _check_import() is None


def triton_unavailable_reason() -> str | None:
    """Why triton cannot be used, or None when it can."""
    return _check_import()


def interpreted() -> bool:
    """Whether the kernels run (or would run) under the Triton interpreter on CPU.

    Triton picks interpreter or compiled mode when a jit function is defined, from
    ``TRITON_INTERPRET`` at that moment; its own library functions are defined when triton is
    first imported. So the interpreter needs ``TRITON_INTERPRET=1`` before triton's first import
    (the test suite runs the interpreter tests in a subprocess for that reason)."""
    from_env = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if _impl is not None or "triton" in sys.modules:
        if _check_import():
            return False
        import triton.language.standard as std
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance((_impl._dense_fwd if _impl is not None else std.sum), InterpretedFunction)
    return from_env


def unavailable_reason(device, dtype, *, tile: int | None = None,
                       head_dims: tuple[int, int] | None = None) -> str | None:
    """Why the kernels cannot run on ``device`` with ``dtype`` inputs (a plan with dense tiles of
    size ``tile``, None when it has none; query / value head dims ``head_dims``), or None when
    they can."""
    why = triton_unavailable_reason()
    if why:
        return why
    device = torch.device(device)
    if dtype not in _DTYPES:
        return f"the Triton kernels take float32, bfloat16 or float16, got {dtype} (use Backend.TORCH)"
    if tile is not None and tile > _MAX_TILE:
        return f"the Triton kernels keep a tile's scores in registers: plan tile <= {_MAX_TILE}, got {tile}"
    if head_dims is not None and max(head_dims) > _MAX_DIM:
        return f"the Triton kernels take head dims <= {_MAX_DIM}, got {head_dims[0]} and {head_dims[1]}"
    if tile is not None and head_dims is not None:
        cls = (dtype == torch.float32, max(16, triton_next_pow2(tile)), max(64, triton_next_pow2(max(head_dims))))
        if cls in _NO_FIT:
            return (f"{_NO_FIT[cls]} (tile {tile}, head dims {head_dims[0]} and {head_dims[1]}, {dtype}); "
                    f"use a plan tile <= 64{' or bf16' if dtype == torch.float32 else ''}")
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreted():
            return None
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return ("TRITON_INTERPRET=1 was set after triton was imported in compiled mode; set it before "
                    "triton's first import in the process")
        return ("CPU tensors run the Triton kernels only under the Triton interpreter (TRITON_INTERPRET=1 "
                "before triton is first imported)")
    return f"the Triton kernels run on CUDA devices (or on CPU under TRITON_INTERPRET=1), got {device}"


# ---------------------------------------------------------------------------------------------
# Plan tables: derived once per (plan, device) and cached on the plan.


class _Work:
    """Work items over a CSR-like structure: unit ``u`` owns entries ``ptr[u]..ptr[u+1]``.

    Units with at most ``limit`` entries are one item each (``unit``, ``start``, ``stop``); a
    longer unit (a global row or key, a hub node) is cut into segments of ``limit`` entries that
    run as separate programs and write partial results, merged afterwards (flash-decoding's
    split-K), so no program walks thousands of tiles while the others idle. ``seg_owner``:
    index into ``long_units`` of each segment."""

    def __init__(self, units: torch.Tensor, ptr: torch.Tensor, limit: int):
        ptr = ptr.long()
        lo, hi = ptr[:-1], ptr[1:]
        long = (hi - lo) > limit
        i32 = torch.int32
        self.unit, self.start, self.stop = units[~long].to(i32), lo[~long].to(i32), hi[~long].to(i32)
        self.long_units = units[long].long()
        nseg = -(-(hi[long] - lo[long]) // limit)
        owner = torch.repeat_interleave(torch.arange(nseg.numel(), device=ptr.device), nseg)
        first = torch.cumsum(nseg, 0) - nseg
        k = torch.arange(owner.numel(), device=ptr.device) - first[owner]
        seg_start = lo[long][owner] + k * limit
        self.seg_owner = owner
        self.seg_unit = self.long_units[owner].to(i32)
        self.seg_start = seg_start.to(i32)
        self.seg_stop = torch.minimum(seg_start + limit, hi[long][owner]).to(i32)

    @property
    def items(self) -> int:
        return int(self.unit.numel())

    @property
    def segments(self) -> int:
        return int(self.seg_unit.numel())


class _Tables:
    """Index tensors of a plan in the kernels' layout (int32 ids, uint8 bitmaps, work items)."""

    def __init__(self, plan: TilingPlan, device):
        self.plan, self.device = plan, device
        T = plan.tile
        self.T, self.hm = T, 1 if plan.num_heads is None else plan.num_heads
        self.block_t = max(16, triton_next_pow2(T))
        QB, KB = -(-plan.num_queries // T), -(-plan.num_keys // T)
        self.tiles = tiles = dense_tiles(plan, device)
        self.n_tiles = tiles.count
        i32 = torch.int32
        if self.n_tiles:
            qblk, qcount = torch.unique_consecutive(tiles.tq, return_counts=True)
            kperm = torch.sort(tiles.tk * max(QB, 1) + tiles.tq).indices
            kblk, kcount = torch.unique_consecutive(tiles.tk[kperm], return_counts=True)
            self.qwork = _Work(qblk, _ptr(qcount), _MAX_TILES)
            self.kwork = _Work(kblk, _ptr(kcount), _MAX_TILES)
            self.kperm = kperm.to(i32)
            self.tq, self.tk = tiles.tq.to(i32), tiles.tk.to(i32)
            self.mask = tiles.mask.view(torch.uint8)  # [NT, Hm, T, T]
            self.full = tiles.mask.flatten(2).all(-1).to(torch.uint8).contiguous()  # [NT, Hm]
            # Every query (key) block with tiles is written by an item or by a merge.
            self.covers_q = qblk.numel() == QB
            self.covers_k = kblk.numel() == KB
        self._emap = None
        sp = plan.sparse
        self.csr, self.block_n = None, 16
        if sp is not None:
            ha = sp.head_allowed.to(device)
            ha = ha.to(torch.uint8).contiguous() if ha.numel() else torch.zeros(1, dtype=torch.uint8, device=device)
            perm = sp.t_perm.to(device)
            # Neighbour chunk: the mean row length rounded up to a power of two (masked lanes cost
            # no memory traffic; a second, nearly empty chunk would cost a full iteration).
            mean = sp.col.numel() / max(1, plan.num_queries)
            self.block_n = int(min(64, max(16, triton_next_pow2(math.ceil(mean)))))
            limit = _MAX_CHUNKS * self.block_n
            self.rwork = _Work(torch.arange(plan.num_queries, device=device), sp.crow.to(device), limit)
            self.twork = _Work(torch.arange(plan.num_keys, device=device), sp.t_crow.to(device), limit)
            self.csr = dict(
                col=sp.col.to(device, i32), eid=sp.edge_id.to(device, i32), ha=ha,
                tcol=sp.t_col.to(device, i32), teid=sp.edge_id.to(device)[perm].to(i32),
                tha=ha[perm].contiguous() if plan.num_heads is not None else ha)

    @property
    def emap(self) -> torch.Tensor:
        if self._emap is None:
            self._emap = dense_edge_map(self.plan, self.tiles, self.device)
        return self._emap

    def block_rows(self, blocks: torch.Tensor, n: int):
        """Rows ``[U, T]`` of blocks and which of them exist (``< n``)."""
        rows = blocks[:, None] * self.T + torch.arange(self.T, device=blocks.device)
        return rows, rows < n


def triton_next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _ptr(counts: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def _tables(plan: TilingPlan, device) -> _Tables:
    cache = plan.__dict__.setdefault("_triton_tables", {})
    key = (str(torch.device(device)), _MAX_TILES, _MAX_CHUNKS)
    if key not in cache:
        if plan.num_edges >= 2**31 - 1:
            raise ValueError(f"expected fewer than 2**31 edges for the Triton kernels, got {plan.num_edges}")
        cache[key] = _Tables(plan, device)
    return cache[key]


def _lse_merge(owner, count, m, l, acc):
    """Merge partial online-softmax states (log2-domain ``m``, ``l``, unnormalised ``acc``;
    leading dim = segment) into ``count`` owners by the log-sum-exp rule."""
    shape = (count,) + tuple(m.shape[1:])
    index = owner.view((-1,) + (1,) * (m.dim() - 1)).expand_as(m)
    mm = torch.full(shape, float("-inf"), device=m.device).scatter_reduce_(0, index, m, "amax")
    safe = torch.where(torch.isinf(mm), torch.zeros_like(mm), mm)
    w = torch.exp2(m - safe[owner])
    ll = torch.zeros(shape, device=m.device).index_add_(0, owner, l * w)
    aa = torch.zeros(shape + (acc.shape[-1],), device=m.device).index_add_(0, owner, acc * w[..., None])
    return mm, ll, aa


def _finish(m, l, acc, dtype):
    """Normalised output and natural-log lse from a log2-domain state."""
    ok = l > 0
    out = acc / torch.where(ok, l, torch.ones_like(l))[..., None]
    lse = torch.where(ok, (m + torch.log2(torch.where(ok, l, torch.ones_like(l)))) * _LN2,
                      torch.full_like(m, float("-inf")))
    return out.to(dtype), lse


# ---------------------------------------------------------------------------------------------
# Launchers.


def _dense_config(dtype: torch.dtype):
    """``(keys_first, dkdv_passes)`` of the dense dK/dV kernel.

    fp32 runs IEEE matmuls on the FMA units, whose operands are replicated across threads:
    keys-first (no register transposes) and two launches (one accumulator each) are what compile
    without spills (up to 10 KB per thread otherwise; ``python -m graphattn.bench gpu-compile``).
    bf16 / fp16 (tensor cores) keep the forward's orientation, which takes less shared memory
    than reading Q and dO twice."""
    if dtype == torch.float32:
        return True, ((True, False), (False, True))
    return False, ((True, True),)


# (num_warps, num_stages) of each dense kernel, chosen by the sm_90 compile sweep
# (``python -m graphattn.bench gpu-compile --sweep``: among the (warps, stages) that fit an SM,
# fewest spilled bytes, then most pipeline stages, then the conventional warp count). No GPU
# timing has chosen them yet. Key: (fp32, BLOCK_T, BLOCK_D class (64: head dims <= 64), bias).
# Swept for sm_90 (H100/H200, 227 KiB shared memory per block); an SM with less (A100: 163 KiB)
# may not fit the large head-dim classes: `gpu-compile --arch 80` shows which.
_DENSE_LAUNCH: dict[tuple, dict[str, tuple[int, int]]] = {
    (False, 64, 64, False): {"fwd": (4, 3), "dq": (4, 3), "dkdv": (4, 3)},
    (False, 64, 64, True): {"fwd": (8, 3), "dq": (8, 3), "dkdv": (8, 3)},
    (False, 64, 128, False): {"fwd": (4, 3), "dq": (4, 3), "dkdv": (8, 3)},
    (False, 64, 128, True): {"fwd": (8, 3), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 64, 256, False): {"fwd": (8, 2), "dq": (4, 2), "dkdv": (8, 1)},
    (False, 64, 256, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 128, 64, False): {"fwd": (8, 3), "dq": (8, 3), "dkdv": (8, 1)},
    (False, 128, 64, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (False, 128, 128, False): {"fwd": (8, 2), "dq": (8, 2), "dkdv": (8, 1)},
    (False, 128, 128, True): {"fwd": (8, 1), "dq": (8, 1), "dkdv": (8, 1)},
    (True, 64, 64, False): {"fwd": (16, 3), "dq": (16, 3), "dkdv": (16, 3)},
    (True, 64, 64, True): {"fwd": (16, 3), "dq": (16, 1), "dkdv": (16, 3)},
    (True, 64, 128, False): {"fwd": (8, 3), "dq": (16, 3), "dkdv": (16, 3)},
    (True, 64, 128, True): {"fwd": (16, 2), "dq": (16, 1), "dkdv": (16, 2)},
}
# Where the sweep found no launch of the backward that fits an SM (shared memory), or only
# ones that spill kilobytes per thread (fp32 128-tiles): the Triton backend declines these.
_NO_FIT = {
    (False, 128, 256): "a 128-tile with head dims above 128 in bf16/fp16 needs more shared memory than an SM has",
    (True, 64, 256): "fp32 with head dims above 128 needs more shared memory than an SM has",
    (True, 128, 64): "fp32 with a 128-tile spills registers (kilobytes per thread)",
    (True, 128, 128): "fp32 with a 128-tile spills registers (kilobytes per thread)",
    (True, 128, 256): "fp32 with a 128-tile needs more shared memory than an SM has",
}
_LAUNCH_OVERRIDE: tuple[int, int] | None = None  # the sweep's candidate, for every dense kernel


def _dense_launch(kernel: str, block_t: int, block_d: int, dtype: torch.dtype, has_bias: bool) -> tuple[int, int]:
    """``(num_warps, num_stages)`` of dense kernel ``kernel`` ("fwd", "dq", "dkdv")."""
    if _LAUNCH_OVERRIDE is not None:
        return _LAUNCH_OVERRIDE
    fp32 = dtype == torch.float32
    entry = _DENSE_LAUNCH.get((fp32, block_t, max(64, block_d), has_bias))
    if entry is not None:
        return entry[kernel]
    # Small tiles (16, 32) use little of an SM in any configuration.
    return (8 if fp32 else 4), 3


class _Call:
    """Per-call constants shared by the launches of one forward or backward."""

    def __init__(self, q, k, v, bias, tabs: _Tables, scale, dropout_p, drop_key):
        self.nq, self.H, self.D = q.shape
        self.nk, self.DV = k.shape[0], v.shape[2]
        self.tabs = tabs
        self.scale, self.scale2 = float(scale), float(scale) * _LOG2E
        self.dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        self.bias = bias if bias is not None else torch.zeros(1, dtype=torch.float32, device=q.device)
        self.has_bias = bias is not None
        self.per_head = tabs.plan.num_heads is not None
        self.dropout = dropout_p > 0
        self.k0, self.k1 = int(drop_key) & _M32, (int(drop_key) >> 32) & _M32
        self.thr = int(dropout_p * 2**32)
        self.inv_keep = 1.0 / (1.0 - dropout_p)
        interp = interpreted()
        self.consts = dict(BLOCK_D=max(16, triton_next_pow2(self.D)), BLOCK_DV=max(16, triton_next_pow2(self.DV)))
        self.prec = "ieee" if q.dtype == torch.float32 else None  # never TF32 for fp32 inputs
        self.emu = interp and q.dtype == torch.bfloat16
        self.keys_first, self.dkdv_passes = _dense_config(q.dtype)
        block_d = max(self.consts["BLOCK_D"], self.consts["BLOCK_DV"])
        self.launch = {name: ((1, 1) if interp else _dense_launch(name, tabs.block_t, block_d, q.dtype, self.has_bias))
                       for name in ("fwd", "dq", "dkdv")}
        # CSR programs hold a [BLOCK_N, BLOCK_D] neighbour chunk: 8 warps from 64 x 256 up keep the
        # backward from spilling (sm_90 compile report), fewer for small chunks.
        chunk = tabs.block_n * max(self.consts["BLOCK_D"], self.consts["BLOCK_DV"])
        self.csr_warps = 1 if interp else (8 if chunk >= 16384 else (4 if tabs.block_n >= 64 else 2))

    def drop_args(self):
        return (self.k0, self.k1, self.thr, self.inv_keep)

    def dense_opts(self, kernel: str) -> dict:
        warps, stages = self.launch[kernel]
        return dict(num_warps=warps, num_stages=stages)

    def emap(self):
        return self.tabs.emap if self.has_bias else self.dummy

    def f32(self, *shape):
        return torch.empty(*shape, dtype=torch.float32, device=self.dummy.device)


def _items(work: _Work, partial: bool):
    """(grid size, unit, start, stop) of the plain items or of the segments."""
    if partial:
        return work.segments, work.seg_unit, work.seg_start, work.seg_stop
    return work.items, work.unit, work.start, work.stop


def _forward(q, k, v, bias, tabs: _Tables, scale, dropout_p, drop_key):
    impl = _kernels()
    c = _Call(q, k, v, bias, tabs, scale, dropout_p, drop_key)
    nq, H, DV, T = c.nq, c.H, c.DV, tabs.T
    dev = q.device
    out = torch.empty(nq, H, DV, dtype=q.dtype, device=dev)
    lse = torch.empty(nq, H, dtype=torch.float32, device=dev)
    dense, csr = tabs.n_tiles > 0, tabs.csr
    if nq == 0:
        return out, lse
    if not dense and csr is None:  # no edges: every query is keyless
        return out.zero_(), lse.fill_(float("-inf"))
    if dense:
        if csr is None:
            acc = m = l = c.dummy
            if not tabs.covers_q:  # query blocks without dense tiles: keyless rows
                out.zero_()
                lse.fill_(float("-inf"))
        else:  # the running state per row, continued by the CSR part
            acc = torch.zeros(nq, H, DV, dtype=torch.float32, device=dev)
            m = torch.full((nq, H), float("-inf"), device=dev)
            l = torch.zeros(nq, H, device=dev)
        qw = tabs.qwork
        for partial in (False, True):
            n, unit, start, stop = _items(qw, partial)
            if n == 0:
                continue
            if partial:
                pacc, pm, pl = c.f32(n, T, H, DV), c.f32(n, T, H), c.f32(n, T, H)
            impl._dense_fwd[(n, H)](
                q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.tk,
                pacc if partial else acc, pm if partial else m, pl if partial else l, out, lse,
                nq, c.nk, H, tabs.hm, c.D, DV, T, c.scale2, *c.drop_args(),
                BLOCK_T=tabs.block_t, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                FINAL=csr is None, PARTIAL=partial, PREC=c.prec, EMU=c.emu, **c.dense_opts("fwd"), **c.consts)
        if qw.segments:  # long query blocks: merge their segments, per row
            mm, ll, aa = _lse_merge(qw.seg_owner, qw.long_units.numel(), pm, pl, pacc)
            rows, ok = tabs.block_rows(qw.long_units, nq)
            rows, mm, ll, aa = rows[ok], mm[ok], ll[ok], aa[ok]
            if csr is None:
                out[rows], lse[rows] = _finish(mm, ll, aa, q.dtype)
            else:
                m[rows], l[rows], acc[rows] = mm, ll, aa
    if csr is not None:
        rw = tabs.rwork
        for partial in (False, True):
            n, unit, start, stop = _items(rw, partial)
            if n == 0:
                continue
            if partial:
                pacc, pm, pl = c.f32(n, H, DV), c.f32(n, H), c.f32(n, H)
            state = (pacc, pm, pl) if partial else ((acc, m, l) if dense else (c.dummy,) * 3)
            impl._csr_fwd[(n, H)](
                q, k, v, c.bias, unit, start, stop, csr["col"], csr["eid"], csr["ha"], *state, out, lse,
                c.nk, H, c.D, DV, c.scale2, *c.drop_args(),
                BLOCK_N=tabs.block_n, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                INIT=dense and not partial, PARTIAL=partial, num_warps=c.csr_warps, **c.consts)
        if rw.segments:  # long rows: their segments and the dense part's state, merged
            rows = rw.long_units
            owner, pm_all, pl_all, pacc_all = rw.seg_owner, pm, pl, pacc
            if dense:
                own = torch.arange(rows.numel(), device=dev)
                owner = torch.cat([owner, own])
                pm_all, pl_all = torch.cat([pm, m[rows]]), torch.cat([pl, l[rows]])
                pacc_all = torch.cat([pacc, acc[rows]])
            out[rows], lse[rows] = _finish(*_lse_merge(owner, rows.numel(), pm_all, pl_all, pacc_all), q.dtype)
    return out, lse


def _backward(dout, q, k, v, bias, out, lse, tabs: _Tables, scale, dropout_p, drop_key, want_dbias):
    impl = _kernels()
    c = _Call(q, k, v, bias, tabs, scale, dropout_p, drop_key)
    nq, nk, H, D, DV, T = c.nq, c.nk, c.H, c.D, c.DV, tabs.T
    dev = q.device
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # [nq, H]
    dense, csr = tabs.n_tiles > 0, tabs.csr
    # The dense items (and merges) write every row of a covered side; the CSR items then add.
    zq = torch.empty if (dense and tabs.covers_q) or (not dense and csr is not None and not tabs.rwork.segments) \
        else torch.zeros
    zk = torch.empty if (dense and tabs.covers_k) or (not dense and csr is not None and not tabs.twork.segments) \
        else torch.zeros
    dq = zq(nq, H, D, dtype=torch.float32, device=dev)
    dk = zk(nk, H, D, dtype=torch.float32, device=dev)
    dv = zk(nk, H, DV, dtype=torch.float32, device=dev)
    dbias = torch.zeros(tabs.plan.num_edges, H, dtype=torch.float32, device=dev) if want_dbias else c.dummy
    if dense:
        common = dict(BLOCK_T=tabs.block_t, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                      PREC=c.prec, EMU=c.emu, **c.consts)
        args = (nq, nk, H, tabs.hm, D, DV, T, c.scale, c.scale2, *c.drop_args())
        for partial in (False, True):
            n, unit, start, stop = _items(tabs.qwork, partial)
            if n:
                target = c.f32(n, T, H, D) if partial else dq
                impl._dense_bwd_dq[(n, H)](
                    q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.tk,
                    dout, lse, delta, target, dbias, *args, WANT_DBIAS=want_dbias, PARTIAL=partial, **common,
                    **c.dense_opts("dq"))
                if partial:
                    _assign_blocks(dq, tabs, tabs.qwork, target, nq)
            n, unit, start, stop = _items(tabs.kwork, partial)
            if n:
                tk_, tv_ = (c.f32(n, T, H, D), c.f32(n, T, H, DV)) if partial else (dk, dv)
                for want_dk, want_dv in c.dkdv_passes:
                    impl._dense_bwd_dkdv[(n, H)](
                        q, k, v, c.bias, c.emap(), tabs.mask, tabs.full, unit, start, stop, tabs.kperm, tabs.tq,
                        dout, lse, delta, tk_, tv_, *args, PARTIAL=partial, KEYS_FIRST=c.keys_first,
                        WANT_DK=want_dk, WANT_DV=want_dv, **common, **c.dense_opts("dkdv"))
                if partial:
                    _assign_blocks(dk, tabs, tabs.kwork, tk_, nk)
                    _assign_blocks(dv, tabs, tabs.kwork, tv_, nk)
    if csr is not None:
        common = dict(BLOCK_N=tabs.block_n, HAS_BIAS=c.has_bias, PER_HEAD=c.per_head, DROPOUT=c.dropout,
                      num_warps=c.csr_warps, **c.consts)
        args = (nk, H, D, DV, c.scale, c.scale2, *c.drop_args())
        for partial in (False, True):
            n, unit, start, stop = _items(tabs.rwork, partial)
            if n:
                target = c.f32(n, H, D) if partial else dq
                impl._csr_bwd_dq[(n, H)](
                    q, k, v, c.bias, unit, start, stop, csr["col"], csr["eid"], csr["ha"], dout, lse, delta,
                    target, dbias, *args, WANT_DBIAS=want_dbias, ADD=dense, PARTIAL=partial, **common)
                if partial:
                    dq.index_add_(0, tabs.rwork.seg_unit.long(), target)
            n, unit, start, stop = _items(tabs.twork, partial)
            if n:
                tk_, tv_ = (c.f32(n, H, D), c.f32(n, H, DV)) if partial else (dk, dv)
                impl._csr_bwd_dkdv[(n, H)](
                    q, k, v, c.bias, unit, start, stop, csr["tcol"], csr["teid"], csr["tha"], dout, lse, delta,
                    tk_, tv_, *args, ADD=dense, PARTIAL=partial, **common)
                if partial:
                    dk.index_add_(0, tabs.twork.seg_unit.long(), tk_)
                    dv.index_add_(0, tabs.twork.seg_unit.long(), tv_)
    return dq, dk, dv, (dbias if want_dbias else None)


def _assign_blocks(target, tabs: _Tables, work: _Work, parts, n):
    """Sum the segments' ``[S, T, H, X]`` partials per long block into its rows of ``target``."""
    summed = torch.zeros((work.long_units.numel(),) + tuple(parts.shape[1:]), device=parts.device)
    summed.index_add_(0, work.seg_owner, parts)
    rows, ok = tabs.block_rows(work.long_units, n)
    target[rows[ok]] = summed[ok]


def _on(device):
    # Triton launches on the current CUDA device: make it the tensors' one.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class FusedGraphAttention(torch.autograd.Function):
    """``(out, lse)`` of exact graph attention through the Triton kernels, with the fused
    backward. ``lse`` is not differentiable (as in the torch engine)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, plan, scale, dropout_p, drop_key):
        tabs = _tables(plan, q.device)
        with _on(q.device):
            out, lse = _forward(q, k, v, bias, tabs, scale, dropout_p, drop_key)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.tabs, ctx.scale, ctx.dropout_p, ctx.drop_key = tabs, scale, dropout_p, drop_key
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, bias, out, lse = ctx.saved_tensors
        want_dbias = bias is not None and ctx.needs_input_grad[3]
        with _on(q.device):
            dq, dk, dv, dbias = _backward(dout.contiguous(), q, k, v, bias, out, lse, ctx.tabs, ctx.scale,
                                          ctx.dropout_p, ctx.drop_key, want_dbias)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None if dbias is None else dbias.to(bias.dtype), None, None, None, None)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: TilingPlan, *,
                    bias: torch.Tensor | None = None, scale: float | None = None, dropout_p: float = 0.0,
                    drop_key: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact graph attention over ``plan`` with the Triton kernels.

    Args:
        q: ``[Nq, H, D]``; k: ``[Nk, H, D]``; v: ``[Nk, H, Dv]``; one dtype among fp32, bf16,
            fp16, on a CUDA device (or on CPU under ``TRITON_INTERPRET=1``).
        plan: the :class:`~graphattn.nn.plan.TilingPlan` of the graph (``Nq`` queries, ``Nk``
            keys; a per-head plan needs ``H`` heads).
        bias: ``[E, H]`` score bias in the plan's edge order (any float dtype; its gradient
            comes back in its dtype).
        scale: score scale (default ``1 / sqrt(D)``).
        dropout_p, drop_key: dropout on the probabilities with the torch engine's counter-based
            keep-mask of key ``drop_key`` (same mask as ``graphattn.nn._engine``).

    Returns:
        ``out`` ``[Nq, H, Dv]`` in the input dtype (zeros for queries without keys) and
        ``lse`` ``[Nq, H]`` float32 (natural log-sum-exp of the scores, ``-inf`` when keyless).
    """
    if not isinstance(plan, TilingPlan):
        raise TypeError(f"expected plan to be a TilingPlan, got {type(plan).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"expected {name} of shape [N, H, D], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    nq, H, D = q.shape
    if k.shape[:2] != v.shape[:2] or k.shape[1] != H or k.shape[2] != D:
        raise ValueError(f"expected k [Nk, {H}, {D}] and v [Nk, {H}, Dv], got {list(k.shape)} and {list(v.shape)}")
    if (plan.num_queries, plan.num_keys) != (nq, k.shape[0]):
        raise ValueError(f"expected a plan over {nq} queries and {k.shape[0]} keys, got "
                         f"{plan.num_queries} and {plan.num_keys}")
    if plan.num_heads is not None and plan.num_heads != H:
        raise ValueError(f"expected {plan.num_heads} heads for the plan's per-head layout, got {H}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (plan.num_edges, H)):
        raise ValueError(f"expected bias of shape [{plan.num_edges}, {H}], got "
                         f"{list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    why = unavailable_reason(q.device, q.dtype, tile=plan.tile if plan.dense else None, head_dims=(D, v.shape[2]))
    if why:
        raise RuntimeError(f"the Triton kernels cannot run: {why}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bias = None if bias is None else bias.contiguous()
    return FusedGraphAttention.apply(q, k, v, bias, plan, scale, float(dropout_p), int(drop_key))
