"""The Triton kernels of the fused graph-attention backend (imports triton; internal).

Load this module only through :func:`graphattn.nn.triton.runtime.kernels_module`, which guards the import and
chooses interpreter or compiled mode. Every kernel works on contiguous ``[N, H, D]`` operands
and on the flat tables that :mod:`graphattn.nn.triton.tables` derives from a
:class:`~graphattn.nn.plan.TilingPlan`:

- dense tiles, one list sorted by (query block, key block): ``TK``/``TQ`` key/query block of a
  tile, ``KPERM`` the tiles in (key block, query block) order (for dK/dV), ``MASK`` uint8
  ``[tiles, Hm, T, T]`` in-tile edge bitmaps, ``FULL`` uint8 ``[tiles, Hm]`` (1: every in-range
  cell is an edge, the bitmap is not read), ``EMAP`` int32 ``[tiles, T, T]`` the edge id of each
  cell (-1 off the graph; only with a bias);
- sparse edges: the plan's CSR over queries (``COL``, ``EID``, per-head ``HA``) and its
  transpose (``TCOL``, ``TEID``, ``THA``) for dK/dV without atomics;
- work items ``(UNIT, START, STOP)``: a query block / key block / query row / key row and the
  range of its tiles or edges. Long units (global rows and keys, hubs) are cut into several
  items that write partial results (``PARTIAL``), merged by the caller.

Scores live in the log2 domain (``s2 = log2(e) * (scale * q.k + bias)``) so the softmax uses
``exp2``; ``lse`` in and out of the kernels is the natural-log log-sum-exp of the torch engine.
The backward is flash attention's (Dao 2023, FlashAttention-2, Alg. 2): probabilities are
recomputed from ``lse`` and ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``; dQ runs
per query block, dK/dV per key block (two passes instead of atomics: deterministic results).
Dropout reproduces the torch engine's keep-mask bit for bit: the same counter-based hash
(``graphattn._random.hash_uniform``) of ``(query * Nk + key, head)``.
"""

try:
    import triton
    import triton.language as tl
except ImportError:  # importable without triton (doctest collection); runtime checks before use
    from types import SimpleNamespace

    tl = SimpleNamespace(constexpr=None)
    triton = SimpleNamespace(jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f))

# The dropout words are plain integers: Triton would turn one that happens to equal 1 into a
# compile-time constant, which has no .to().
_NO_SPEC = ["k0", "k1", "thr"]


@triton.jit
def _mix32(x):
    # lowbias32 on 32-bit values held in uint64 (products < 2**64, so the mod-2**32 is exact).
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _keep(code, h, k0, k1, thr):
    """hash_uniform(key, row=code, counter=h, stream=0) >= thr (see graphattn._random)."""
    hh = _mix32(h.to(tl.uint64))  # _mix32(0) == 0, so the stream word drops out
    hh = _mix32(hh ^ k0.to(tl.uint64))
    c = code.to(tl.uint64)
    x = _mix32(hh ^ (c >> 32))
    x = _mix32(x ^ k1.to(tl.uint64))
    x = _mix32(x ^ (c & 0xFFFFFFFF))
    return x >= thr.to(tl.uint64)


@triton.jit
def _program(UNIT, START, STOP, PER_HEAD: tl.constexpr):
    """This program's work item ``b`` and head ``h``, the head of the edge layout ``hm``, and the
    item's unit (block or row, int64) and entry range ``start..stop``."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    if PER_HEAD:
        hm = h
    else:
        hm = 0
    return b, h, hm, tl.load(UNIT + b).to(tl.int64), tl.load(START + b), tl.load(STOP + b)


@triton.jit
def _block_rows(block, T, n, BLOCK_T: tl.constexpr):
    """Rows of a ``T``-row block (padded to BLOCK_T) and which of them exist (``< n``)."""
    r = tl.arange(0, BLOCK_T)
    rows = block * T + r
    return rows, (r < T) & (rows < n)


@triton.jit
def _load_rows(P, rows, ok, H, h, W, cols):
    """``P[rows, h, :W]`` of an ``[N, H, W]`` tensor as a ``[rows, cols]`` block (zeros where
    not ``ok`` and past ``W``)."""
    return tl.load(P + (rows * H + h)[:, None] * W + cols[None, :], mask=ok[:, None] & (cols < W)[None, :], other=0.0)


@triton.jit
def _load_rows_t(P, rows, ok, H, h, W, cols):
    """The same block transposed, ``[cols, rows]``, read in that order from memory."""
    return tl.load(P + (rows * H + h)[None, :] * W + cols[:, None], mask=ok[None, :] & (cols < W)[:, None], other=0.0)


@triton.jit
def _store_rows(P, rows, ok, H, h, W, cols, x):
    tl.store(P + (rows * H + h)[:, None] * W + cols[None, :], x, mask=ok[:, None] & (cols < W)[None, :])


@triton.jit
def _mm(a, b, PREC: tl.constexpr, EMU: tl.constexpr):
    # EMU: the interpreter multiplies bfloat16 bit patterns as integers, so bf16 operands are
    # widened first (exact); their fp32 products and accumulation match the tensor cores'.
    if EMU:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _tile_scores(q, kt, rows, rok, cols, cok, t, h, hm, BIAS, EMAP, MASK, FULL, H, HM, T, scale2,
                 BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr, EMU: tl.constexpr,
                 KEYS_FIRST: tl.constexpr = False):
    """Log2-domain scores of one dense tile, -inf off the graph; also the cell -> edge map.

    ``s[query, key]`` from ``q [Tq, D]`` and ``kt [Tk, D]``; with KEYS_FIRST the transposed
    tile ``s[key, query]`` from ``kt`` and ``q`` given as ``[D, Tq]`` (the dK/dV pass, which
    then needs no transpose of computed values: those go through shared memory)."""
    r = tl.arange(0, BLOCK_T)
    if KEYS_FIRST:
        s = _mm(kt, q, PREC, EMU) * scale2
        ok = cok[:, None] & rok[None, :]
        cell = r[None, :] * T + r[:, None]  # the bitmaps are [query, key]
    else:
        s = _mm(q, tl.trans(kt), PREC, EMU) * scale2
        ok = rok[:, None] & cok[None, :]
        cell = r[:, None] * T + r[None, :]
    t64 = tl.full([], 0, tl.int64) + t  # t is an int32 scalar (a Python int in the interpreter)
    full = tl.load(FULL + t64 * HM + hm)
    # A full tile's bitmap is never read: its loads are all predicated off.
    # (The flag is broadcast before the `&`: the interpreter mistypes bool-tensor & bool-scalar.)
    partial = (tl.zeros([BLOCK_T, BLOCK_T], tl.int32) + full) == 0
    bits = tl.load(MASK + (t64 * HM + hm) * T * T + cell, mask=ok & partial, other=1)
    ok = ok & (bits != 0)
    e = tl.full([BLOCK_T, BLOCK_T], -1, tl.int32)
    if HAS_BIAS:
        e = tl.load(EMAP + t64 * T * T + cell, mask=ok, other=-1)
        b = tl.load(BIAS + e.to(tl.int64) * H + h, mask=ok & (e >= 0), other=0.0)
        s += b.to(tl.float32) * 1.4426950408889634
    s = tl.where(ok, s, float("-inf"))
    return s, ok, e


@triton.jit(do_not_specialize=_NO_SPEC)
def _dense_fwd(Q, K, V, BIAS, EMAP, MASK, FULL, UNIT, START, STOP, TK,
               ACC, M, L, OUT, LSE,
               nq, nk, H, HM, D, DV, T, scale2, k0, k1, thr, inv_keep,
               BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               HAS_BIAS: tl.constexpr, PER_HEAD: tl.constexpr, DROPOUT: tl.constexpr,
               FINAL: tl.constexpr, PARTIAL: tl.constexpr, PREC: tl.constexpr, EMU: tl.constexpr):
    """One (work item, head): online softmax over the tiles ``START..STOP`` of query block
    ``UNIT``. FINAL: write the normalised output and lse; else the running (acc, m, l) per row,
    or with PARTIAL per item (a segment of a long block, merged afterwards)."""
    b, h, hm, qb, t0, t1 = _program(UNIT, START, STOP, PER_HEAD)
    r = tl.arange(0, BLOCK_T)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    rows, rok = _block_rows(qb, T, nq, BLOCK_T)
    q = _load_rows(Q, rows, rok, H, h, D, dd)
    m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_T], tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_DV], tl.float32)
    for t in range(t0, t1):
        kb = tl.load(TK + t).to(tl.int64)
        cols, cok = _block_rows(kb, T, nk, BLOCK_T)
        kt = _load_rows(K, cols, cok, H, h, D, dd)
        s, ok, e = _tile_scores(q, kt, rows, rok, cols, cok, t, h, hm, BIAS, EMAP, MASK, FULL, H, HM, T,
                                scale2, BLOCK_T, HAS_BIAS, PREC, EMU)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows without keys so far
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            code = rows[:, None] * nk + cols[None, :]
            p = tl.where(_keep(code, h, k0, k1, thr), p * inv_keep, 0.0)
        vt = _load_rows(V, cols, cok, H, h, DV, dv)
        acc = acc * alpha[:, None] + _mm(p.to(vt.dtype), vt, PREC, EMU)
        m_i = m_new
    if PARTIAL:
        slot = (tl.full([], 0, tl.int64) + b) * T + r
        sok = r < T
        _store_rows(ACC, slot, sok, H, h, DV, dv, acc)
        tl.store(M + slot * H + h, m_i, mask=sok)
        tl.store(L + slot * H + h, l_i, mask=sok)
    elif FINAL:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        lse = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        _store_rows(OUT, rows, rok, H, h, DV, dv, out.to(OUT.dtype.element_ty))
        tl.store(LSE + rows * H + h, lse, mask=rok)
    else:
        _store_rows(ACC, rows, rok, H, h, DV, dv, acc)
        tl.store(M + rows * H + h, m_i, mask=rok)
        tl.store(L + rows * H + h, l_i, mask=rok)


@triton.jit(do_not_specialize=_NO_SPEC)
def _csr_fwd(Q, K, V, BIAS, ROWS, START, STOP, COL, EID, HA, ACC, M, L, OUT, LSE,
             nk, H, D, DV, scale2, k0, k1, thr, inv_keep,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
             HAS_BIAS: tl.constexpr, PER_HEAD: tl.constexpr, DROPOUT: tl.constexpr, INIT: tl.constexpr,
             PARTIAL: tl.constexpr):
    """One (work item, head): continue query row ``ROWS``'s online softmax over its sparse
    neighbours ``START..STOP`` in chunks of BLOCK_N (from the dense part's state when INIT), then
    normalise and write; with PARTIAL write the item's (acc, m, l) (a segment of a long row)."""
    b, h, _, i, start, end = _program(ROWS, START, STOP, False)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + (i * H + h) * D + dd, mask=dd < D, other=0.0).to(tl.float32)
    if INIT:
        m_i = tl.load(M + i * H + h)
        l_i = tl.load(L + i * H + h)
        acc = tl.load(ACC + (i * H + h) * DV + dv, mask=dv < DV, other=0.0)
    else:
        m_i = tl.full([], float("-inf"), tl.float32)
        l_i = tl.full([], 0.0, tl.float32)
        acc = tl.zeros([BLOCK_DV], tl.float32)
    for e0 in range(start, end, BLOCK_N):
        offs = e0 + tl.arange(0, BLOCK_N)
        ev = offs < end
        j = tl.load(COL + offs, mask=ev, other=0).to(tl.int64)
        kt = _load_rows(K, j, ev, H, h, D, dd)
        s = tl.sum(kt.to(tl.float32) * q[None, :], 1) * scale2
        if PER_HEAD:
            ev = ev & (tl.load(HA + offs.to(tl.int64) * H + h, mask=ev, other=0) != 0)
        if HAS_BIAS:
            eid = tl.load(EID + offs, mask=ev, other=0).to(tl.int64)
            s += tl.load(BIAS + eid * H + h, mask=ev, other=0.0).to(tl.float32) * 1.4426950408889634
        s = tl.where(ev, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe)
        l_i = l_i * alpha + tl.sum(p, 0)
        if DROPOUT:
            p = tl.where(_keep(i * nk + j, h, k0, k1, thr), p * inv_keep, 0.0)
        vt = _load_rows(V, j, ev, H, h, DV, dv)
        acc = acc * alpha + tl.sum(p[:, None] * vt.to(tl.float32), 0)
        m_i = m_new
    if PARTIAL:
        slot = tl.full([], 0, tl.int64) + b
        tl.store(ACC + (slot * H + h) * DV + dv, acc, mask=dv < DV)
        tl.store(M + slot * H + h, m_i)
        tl.store(L + slot * H + h, l_i)
    else:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        tl.store(OUT + (i * H + h) * DV + dv, (acc / l_safe).to(OUT.dtype.element_ty), mask=dv < DV)
        tl.store(LSE + i * H + h, tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf")))


@triton.jit
def _row_stats(LSE, DELTA, idx, ok):
    # log2-domain lse; rows without keys (lse = -inf) and padding rows get +inf, so P = 0 there.
    lse = tl.load(LSE + idx, mask=ok, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + idx, mask=ok, other=0.0)
    return lse2, delta


@triton.jit(do_not_specialize=_NO_SPEC)
def _dense_bwd_dq(Q, K, V, BIAS, EMAP, MASK, FULL, UNIT, START, STOP, TK, DO, LSE, DELTA, DQ, DBIAS,
                  nq, nk, H, HM, D, DV, T, scale, scale2, k0, k1, thr, inv_keep,
                  BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  HAS_BIAS: tl.constexpr, WANT_DBIAS: tl.constexpr, PER_HEAD: tl.constexpr,
                  DROPOUT: tl.constexpr, PARTIAL: tl.constexpr, PREC: tl.constexpr, EMU: tl.constexpr):
    """One (work item, head): dQ of query block ``UNIT`` over its tiles ``START..STOP``, and
    dbias of their edges; with PARTIAL dQ goes to the item's slot (summed afterwards)."""
    b, h, hm, qb, t0, t1 = _program(UNIT, START, STOP, PER_HEAD)
    r = tl.arange(0, BLOCK_T)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    rows, rok = _block_rows(qb, T, nq, BLOCK_T)
    q = _load_rows(Q, rows, rok, H, h, D, dd)
    do = _load_rows(DO, rows, rok, H, h, DV, dv)
    lse2, delta = _row_stats(LSE, DELTA, rows * H + h, rok)
    dq = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for t in range(t0, t1):
        kb = tl.load(TK + t).to(tl.int64)
        cols, cok = _block_rows(kb, T, nk, BLOCK_T)
        kt = _load_rows(K, cols, cok, H, h, D, dd)
        vt = _load_rows(V, cols, cok, H, h, DV, dv)
        s, ok, e = _tile_scores(q, kt, rows, rok, cols, cok, t, h, hm, BIAS, EMAP, MASK, FULL, H, HM, T,
                                scale2, BLOCK_T, HAS_BIAS, PREC, EMU)
        p = tl.exp2(s - lse2[:, None])
        dp = _mm(do, tl.trans(vt), PREC, EMU)
        if DROPOUT:
            code = rows[:, None] * nk + cols[None, :]
            dp = tl.where(_keep(code, h, k0, k1, thr), dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        if WANT_DBIAS:
            tl.store(DBIAS + e.to(tl.int64) * H + h, ds, mask=ok & (e >= 0))
        dq += _mm(ds.to(kt.dtype), kt, PREC, EMU)
    if PARTIAL:
        slot = (tl.full([], 0, tl.int64) + b) * T + r
        _store_rows(DQ, slot, r < T, H, h, D, dd, dq * scale)
    else:
        _store_rows(DQ, rows, rok, H, h, D, dd, dq * scale)


@triton.jit(do_not_specialize=_NO_SPEC)
def _dense_bwd_dkdv(Q, K, V, BIAS, EMAP, MASK, FULL, UNIT, START, STOP, KPERM, TQ, DO, LSE, DELTA, DK, DVAL,
                    nq, nk, H, HM, D, DV, T, scale, scale2, k0, k1, thr, inv_keep,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    HAS_BIAS: tl.constexpr, PER_HEAD: tl.constexpr, DROPOUT: tl.constexpr,
                    PARTIAL: tl.constexpr, PREC: tl.constexpr, EMU: tl.constexpr,
                    KEYS_FIRST: tl.constexpr, WANT_DK: tl.constexpr, WANT_DV: tl.constexpr):
    """One (work item, head): dK and dV of key block ``UNIT`` over the tiles ``KPERM[START..STOP]``
    (the query blocks that attend it); with PARTIAL into the item's slot (summed afterwards).
    KEYS_FIRST: the tile's scores in [key, query] orientation. WANT_DK / WANT_DV: compute only
    one of the two (fp32 launches twice: its FMA matmuls spill registers when one program holds
    both accumulators; see graphattn.nn.triton.launch.dense_config)."""
    b, h, hm, kb, u0, u1 = _program(UNIT, START, STOP, PER_HEAD)
    r = tl.arange(0, BLOCK_T)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    cols, cok = _block_rows(kb, T, nk, BLOCK_T)
    kt = _load_rows(K, cols, cok, H, h, D, dd)
    vt = _load_rows(V, cols, cok, H, h, DV, dv)
    dk = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    dvacc = tl.zeros([BLOCK_T, BLOCK_DV], tl.float32)
    for u in range(u0, u1):
        t = tl.load(KPERM + u)
        qb = tl.load(TQ + t).to(tl.int64)
        rows, rok = _block_rows(qb, T, nq, BLOCK_T)
        lse2, delta = _row_stats(LSE, DELTA, rows * H + h, rok)
        if KEYS_FIRST:
            # FlashAttention-2's dK/dV loop: S^T = K Q^T, dV += P^T dO, dP^T = V dO^T,
            # dK += dS^T Q, with Q^T and dO^T read transposed from memory: no computed value is
            # transposed. For fp32 (FMA matmuls) this is what keeps registers from spilling.
            qt = _load_rows_t(Q, rows, rok, H, h, D, dd)
            pt, ok, e = _tile_scores(qt, kt, rows, rok, cols, cok, t, h, hm, BIAS, EMAP, MASK, FULL, H, HM, T,
                                     scale2, BLOCK_T, HAS_BIAS, PREC, EMU, True)
            pt = tl.exp2(pt - lse2[None, :])  # [Tk, Tq]
            if DROPOUT:
                keep = _keep(rows[None, :] * nk + cols[:, None], h, k0, k1, thr)
            if WANT_DV:
                do = _load_rows(DO, rows, rok, H, h, DV, dv)
                if DROPOUT:
                    pdt = tl.where(keep, pt * inv_keep, 0.0)
                else:
                    pdt = pt
                dvacc += _mm(pdt.to(do.dtype), do, PREC, EMU)
            if WANT_DK:
                dot_ = _load_rows_t(DO, rows, rok, H, h, DV, dv)
                dpt = _mm(vt, dot_, PREC, EMU)
                if DROPOUT:
                    dpt = tl.where(keep, dpt * inv_keep, 0.0)
                dst = pt * (dpt - delta[None, :])
                dk += _mm(dst.to(qt.dtype), tl.trans(qt), PREC, EMU)
        else:
            # Query-first (the forward's orientation), transposing P and dS in registers: with
            # tensor-core matmuls this takes less shared memory than reading Q and dO twice.
            q = _load_rows(Q, rows, rok, H, h, D, dd)
            do = _load_rows(DO, rows, rok, H, h, DV, dv)
            s, ok, e = _tile_scores(q, kt, rows, rok, cols, cok, t, h, hm, BIAS, EMAP, MASK, FULL, H, HM, T,
                                    scale2, BLOCK_T, HAS_BIAS, PREC, EMU)
            p = tl.exp2(s - lse2[:, None])  # [Tq, Tk]
            if DROPOUT:
                keep = _keep(rows[:, None] * nk + cols[None, :], h, k0, k1, thr)
            if WANT_DV:
                if DROPOUT:
                    pd = tl.where(keep, p * inv_keep, 0.0)
                else:
                    pd = p
                dvacc += _mm(tl.trans(pd.to(do.dtype)), do, PREC, EMU)
            if WANT_DK:
                dp = _mm(do, tl.trans(vt), PREC, EMU)
                if DROPOUT:
                    dp = tl.where(keep, dp * inv_keep, 0.0)
                ds = p * (dp - delta[:, None])
                dk += _mm(tl.trans(ds.to(q.dtype)), q, PREC, EMU)
    if PARTIAL:
        slot = (tl.full([], 0, tl.int64) + b) * T + r
        sok = r < T
        if WANT_DK:
            _store_rows(DK, slot, sok, H, h, D, dd, dk * scale)
        if WANT_DV:
            _store_rows(DVAL, slot, sok, H, h, DV, dv, dvacc)
    else:
        if WANT_DK:
            _store_rows(DK, cols, cok, H, h, D, dd, dk * scale)
        if WANT_DV:
            _store_rows(DVAL, cols, cok, H, h, DV, dv, dvacc)


@triton.jit(do_not_specialize=_NO_SPEC)
def _csr_bwd_dq(Q, K, V, BIAS, ROWS, START, STOP, COL, EID, HA, DO, LSE, DELTA, DQ, DBIAS,
                nk, H, D, DV, scale, scale2, k0, k1, thr, inv_keep,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                HAS_BIAS: tl.constexpr, WANT_DBIAS: tl.constexpr, PER_HEAD: tl.constexpr,
                DROPOUT: tl.constexpr, ADD: tl.constexpr, PARTIAL: tl.constexpr):
    """One (work item, head): dQ of query row ``ROWS`` over its sparse neighbours
    ``START..STOP`` (added to the dense part's when ADD; into the item's slot with PARTIAL)."""
    b, h, _, i, start, end = _program(ROWS, START, STOP, False)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + (i * H + h) * D + dd, mask=dd < D, other=0.0).to(tl.float32)
    do = tl.load(DO + (i * H + h) * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
    lse = tl.load(LSE + i * H + h)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + i * H + h)
    dq = tl.zeros([BLOCK_D], tl.float32)
    for e0 in range(start, end, BLOCK_N):
        offs = e0 + tl.arange(0, BLOCK_N)
        ev = offs < end
        j = tl.load(COL + offs, mask=ev, other=0).to(tl.int64)
        kt = _load_rows(K, j, ev, H, h, D, dd).to(tl.float32)
        vt = _load_rows(V, j, ev, H, h, DV, dv).to(tl.float32)
        s = tl.sum(kt * q[None, :], 1) * scale2
        ok = ev
        if PER_HEAD:
            ok = ok & (tl.load(HA + offs.to(tl.int64) * H + h, mask=ev, other=0) != 0)
        eid = tl.load(EID + offs, mask=ev, other=0).to(tl.int64)
        if HAS_BIAS:
            s += tl.load(BIAS + eid * H + h, mask=ok, other=0.0).to(tl.float32) * 1.4426950408889634
        p = tl.where(ok, tl.exp2(s - lse2), 0.0)
        dp = tl.sum(vt * do[None, :], 1)
        if DROPOUT:
            dp = tl.where(_keep(i * nk + j, h, k0, k1, thr), dp * inv_keep, 0.0)
        ds = p * (dp - delta)
        if WANT_DBIAS:
            tl.store(DBIAS + eid * H + h, ds, mask=ev)
        dq += tl.sum(ds[:, None] * kt, 0)
    dq = dq * scale
    if PARTIAL:
        tl.store(DQ + ((tl.full([], 0, tl.int64) + b) * H + h) * D + dd, dq, mask=dd < D)
    else:
        if ADD:
            dq += tl.load(DQ + (i * H + h) * D + dd, mask=dd < D, other=0.0)
        tl.store(DQ + (i * H + h) * D + dd, dq, mask=dd < D)


@triton.jit(do_not_specialize=_NO_SPEC)
def _csr_bwd_dkdv(Q, K, V, BIAS, ROWS, START, STOP, TCOL, TEID, THA, DO, LSE, DELTA, DK, DVAL,
                  nk, H, D, DV, scale, scale2, k0, k1, thr, inv_keep,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  HAS_BIAS: tl.constexpr, PER_HEAD: tl.constexpr, DROPOUT: tl.constexpr, ADD: tl.constexpr,
                  PARTIAL: tl.constexpr):
    """One (work item, head): dK and dV of key row ``ROWS`` over the queries ``START..STOP`` of
    the plan's transposed CSR that attend it (added to the dense part's when ADD; into the
    item's slot with PARTIAL)."""
    b, h, _, j, start, end = _program(ROWS, START, STOP, False)
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    kt = tl.load(K + (j * H + h) * D + dd, mask=dd < D, other=0.0).to(tl.float32)
    vt = tl.load(V + (j * H + h) * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_D], tl.float32)
    dvacc = tl.zeros([BLOCK_DV], tl.float32)
    for e0 in range(start, end, BLOCK_N):
        offs = e0 + tl.arange(0, BLOCK_N)
        ev = offs < end
        i = tl.load(TCOL + offs, mask=ev, other=0).to(tl.int64)
        qg = _load_rows(Q, i, ev, H, h, D, dd).to(tl.float32)
        dog = _load_rows(DO, i, ev, H, h, DV, dv).to(tl.float32)
        lse2, delta = _row_stats(LSE, DELTA, i * H + h, ev)
        s = tl.sum(qg * kt[None, :], 1) * scale2
        ok = ev
        if PER_HEAD:
            ok = ok & (tl.load(THA + offs.to(tl.int64) * H + h, mask=ev, other=0) != 0)
        if HAS_BIAS:
            eid = tl.load(TEID + offs, mask=ev, other=0).to(tl.int64)
            s += tl.load(BIAS + eid * H + h, mask=ok, other=0.0).to(tl.float32) * 1.4426950408889634
        p = tl.where(ok, tl.exp2(s - lse2), 0.0)
        dp = tl.sum(dog * vt[None, :], 1)
        if DROPOUT:
            keep = _keep(i * nk + j, h, k0, k1, thr)
            pd = tl.where(keep, p * inv_keep, 0.0)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        else:
            pd = p
        dvacc += tl.sum(pd[:, None] * dog, 0)
        ds = p * (dp - delta)
        dk += tl.sum(ds[:, None] * qg, 0)
    dk = dk * scale
    if PARTIAL:
        slot = tl.full([], 0, tl.int64) + b
        tl.store(DK + (slot * H + h) * D + dd, dk, mask=dd < D)
        tl.store(DVAL + (slot * H + h) * DV + dv, dvacc, mask=dv < DV)
    else:
        if ADD:
            dk += tl.load(DK + (j * H + h) * D + dd, mask=dd < D, other=0.0)
            dvacc += tl.load(DVAL + (j * H + h) * DV + dv, mask=dv < DV, other=0.0)
        tl.store(DK + (j * H + h) * D + dd, dk, mask=dd < D)
        tl.store(DVAL + (j * H + h) * DV + dv, dvacc, mask=dv < DV)
