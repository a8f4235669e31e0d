"""The row-layout Numba kernels: batch-1 ``gemv`` here, and the decode and x preparation the
small-batch kernels in :mod:`mpsearch.kernels._numba_gemm` share (imports numba; loaded lazily
by :mod:`mpsearch.kernels.numba_cpu`).

Per output row the dot product is split as
``y[o] = sum_g s_g * sum_{k in g} code_k * x_k  -  sum_g s_g * z_g * xsum_g``:
the zero-point term uses group sums of x computed once per call, so the hot loop only
converts codes, multiplies by x and accumulates.

Hot loop: one 128-code block (``16 * bits`` bytes) at a time. :func:`load_chunks` puts its 16
eight-code chunks in 16 int32 lanes; :func:`slot` isolates code j of every chunk with a single
mask or shift (see :mod:`mpsearch.kernels._chunk_slots`). Lane l, slot j is code ``8l + j``
of the block, so x comes permuted and pre-scaled to match (:func:`prepare_x`). The block's
scale is a broadcast when one group covers the block (G a multiple of 128, or one group per
row), else a per-lane gather (G a multiple of 8: a chunk never straddles groups). The last
``K % 128`` codes of a row are decoded one by one.

A kernel call does everything in one dispatch: x is prepared serially, then one parallel
region of ``workers`` loops, each claiming tasks of ``rows_per_task`` rows with an atomic
counter (:func:`~mpsearch.kernels._numba_simd.fetch_add`) until none are left. Numba's own
``prange`` split is static (one equal share per thread), so one late thread delayed the call.

Each width gets its own compiled kernel (``bits`` is a compile-time constant), cached on disk
next to this file. Numba keys that cache on this file only: after editing ``_numba_simd.py``
or ``_chunk_slots.py``, delete ``__pycache__/*.nbi`` / ``*.nbc`` (or touch this file and
``_numba_gemm.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from mpsearch.kernels._chunk_slots import slot_exponents
from mpsearch.kernels._numba_simd import (
    OPTS,
    fetch_add,
    load_chunks,
    njit_as,
    prefetch,
    scale_at,
    slot,
    vadd,
    vgather,
    vload,
    vload_scale,
    vload_u8f,
    vmul,
    vmuladd,
    vsplat,
    vstore,
    vsum,
    vzero,
)

# gemv prefetches the codes this many bytes ahead for widths >= 4. Measured from DRAM at
# 4096x4096 and 11008x4096: -15% time at 8 bits, -4..7% at 4 bits; at 2 and 3 bits no gain or
# a loss (their blocks take longer to decode than to load).
PREFETCH_AHEAD = 4096


@njit(inline="always", **OPTS)
def _row_scales(scale_row, zero_row, sf, sz):
    """sf[g] = scale as float32, sz[g] = scale * zero, for one row."""
    ng = scale_row.shape[0]
    g = 0
    while g + 16 <= ng:
        s = vload_scale(scale_row, g)
        vstore(sf, g, s)
        vstore(sz, g, vmul(s, vload_u8f(zero_row, g)))
        g += 16
    while g < ng:
        s = scale_at(scale_row, g)
        sf[g] = s
        sz[g] = s * np.float32(zero_row[g])
        g += 1


@njit(inline="always", **OPTS)
def _dot(a, b, boff, n):
    """sum_i a[i] * b[boff + i] in float32, 16 lanes then a fixed-order lane sum."""
    acc = vzero()
    i = 0
    while i + 16 <= n:
        acc = vmuladd(vload(a, i), vload(b, boff + i), acc)
        i += 16
    total = vsum(acc)
    while i < n:
        total += a[i] * b[boff + i]
        i += 1
    return total


@njit(inline="always", **OPTS)
def _code_at(row, k, bits):
    """Code k of a packed row (little-endian bit stream), read from at most two bytes."""
    bit = k * bits
    p = bit >> 3
    v = np.int64(row[p])
    if p + 1 < row.shape[0]:
        v |= np.int64(row[p + 1]) << 8
    return (v >> (bit & 7)) & ((1 << bits) - 1)


@njit(**OPTS)
def _slot_scales(exps):
    """2^-e_j per slot j: undoes the power of two the in-place decode leaves (exact)."""
    out = np.empty(8, np.float32)
    for j in range(8):
        out[j] = np.float32(math.ldexp(1.0, -exps[j]))
    return out


@njit(**OPTS)
def _group_index(nblk, group, lane_mode):
    """Group of each 128-code block (broadcast mode) or of each eight-code chunk (lane mode)."""
    if lane_mode:
        grp = np.empty(nblk * 16, np.int32)
        for i in range(nblk * 16):
            grp[i] = 8 * i // group
    else:
        grp = np.empty(nblk, np.int32)
        for i in range(nblk):
            grp[i] = 128 * i // group
    return grp


@njit(**OPTS)
def _unscale(y, exponents):
    """Undo prepare_x's 2^e scaling of tiny rows of x on their outputs (exact up to rounding)."""
    for b in range(y.shape[0]):
        if exponents[b] != 0:
            for o in range(y.shape[1]):
                y[b, o] = np.float32(math.ldexp(np.float64(y[b, o]), -exponents[b]))


@njit(**OPTS)
def prepare_x(x, slot_scale, group, n_groups):
    """x in the kernels' order, in one pass: (xp, xt, xs, exponents).

    ``xp[blk, b, 16 j + l] = x[b, 128 blk + 8 l + j] * slot_scale[j]`` for the full blocks,
    ``xt`` the last ``K % 128`` values, ``xs`` per-group sums (accumulated in float64).
    A row whose largest |x| is below 2^-64 is first scaled by 2^e (exact) so that
    ``x * slot_scale`` stays a normal float; ``exponents[b] = e`` is undone on the outputs.
    """
    nb, K = x.shape
    nblk = K // 128
    kfull = nblk * 128
    xp = np.empty(nblk * nb * 128, np.float32)
    xt = np.empty((nb, K - kfull), np.float32)
    xs = np.empty((nb, n_groups), np.float32)
    exponents = np.zeros(nb, np.int32)
    for b in range(nb):
        # Four independent running maxima / sums: a single chain is latency-bound (~4 us at K=4096).
        m0 = m1 = m2 = m3 = np.float32(0)
        k = 0
        while k + 4 <= K:
            m0, m1 = max(m0, abs(x[b, k])), max(m1, abs(x[b, k + 1]))
            m2, m3 = max(m2, abs(x[b, k + 2])), max(m3, abs(x[b, k + 3]))
            k += 4
        while k < K:
            m0 = max(m0, abs(x[b, k]))
            k += 1
        amax = max(max(m0, m1), max(m2, m3))
        mult = np.float32(1)
        if 0 < amax < 2.0 ** -64:
            exponents[b] = -math.frexp(amax)[1]
            mult = np.float32(math.ldexp(1.0, exponents[b]))
        for g in range(n_groups):
            s0 = s1 = s2 = s3 = 0.0
            k, end = g * group, min(K, (g + 1) * group)
            while k + 4 <= end:
                s0 += np.float64(x[b, k] * mult)
                s1 += np.float64(x[b, k + 1] * mult)
                s2 += np.float64(x[b, k + 2] * mult)
                s3 += np.float64(x[b, k + 3] * mult)
                k += 4
            while k < end:
                s0 += np.float64(x[b, k] * mult)
                k += 1
            xs[b, g] = (s0 + s1) + (s2 + s3)
        for blk in range(nblk):
            base, src = (blk * nb + b) * 128, blk * 128
            for j in range(8):
                s = mult * slot_scale[j]
                for lane in range(16):
                    xp[base + 16 * j + lane] = x[b, src + 8 * lane + j] * s
        for t in range(K - kfull):
            xt[b, t] = x[b, kfull + t] * mult
    return xp, xt, xs, exponents


def make_gemv(bits: int, ahead: int | None = None) -> Callable:
    """The batch-1 kernel for one width: y[o] for every row, rows in parallel.

    ``gemv(packed, scale, zero, x, G, lane_mode, rows_per_task, workers) -> y`` with x (K,):
    the whole call (x preparation, rows, rescaling) is one Numba dispatch and one parallel
    region, in which ``workers`` threads claim tasks of ``rows_per_task`` rows in turn.
    """
    B_, BLK, HI, EXPS = bits, 16 * bits, int(bits > 4), tuple(slot_exponents(bits))
    if ahead is None:
        ahead = PREFETCH_AHEAD if bits >= 4 else 0

    @njit_as(f"gemv{bits}", parallel=True, **OPTS)
    def gemv(packed, scale, zero, x, G, lane_mode, rows_per_task, workers):
        out = packed.shape[0]
        ng = scale.shape[1]
        xp, xts, xss, exponents = prepare_x(x.reshape((1, x.shape[0])), _slot_scales(EXPS), G,
                                            ng)
        xs, xt = xss[0], xts[0]
        nblk = xp.shape[0] // 128
        kfull = nblk * 128
        rowbytes = packed.shape[1]
        grp = _group_index(nblk, G, lane_mode)
        y = np.empty(out, np.float32)
        ntasks = (out + rows_per_task - 1) // rows_per_task
        claimed = np.empty(1, np.int64)  # not np.zeros: that would be a parallel loop
        claimed[0] = 0
        for _ in prange(workers):  # one per thread; tasks are claimed, not preassigned
            sf = np.empty(ng, np.float32)
            sz = np.empty(ng, np.float32)
            while True:
                task = fetch_add(claimed, 0, 1)
                if task >= ntasks:
                    break
                for o in range(task * rows_per_task, min(out, (task + 1) * rows_per_task)):
                    row = packed[o]
                    _row_scales(scale[o], zero[o], sf, sz)
                    acc = vzero()
                    base = o * rowbytes + ahead
                    for blk in range(nblk):
                        if ahead:
                            prefetch(packed, base + blk * BLK)
                            if BLK > 64:
                                prefetch(packed, base + blk * BLK + 64)
                        lo = load_chunks(row, blk * BLK, B_, 0)
                        hi = load_chunks(row, blk * BLK, B_, HI)  # = lo if bits <= 4
                        xo = blk * 128
                        a0 = vmul(slot(lo, hi, B_, 0), vload(xp, xo))
                        a1 = vmul(slot(lo, hi, B_, 1), vload(xp, xo + 16))
                        a0 = vmuladd(slot(lo, hi, B_, 2), vload(xp, xo + 32), a0)
                        a1 = vmuladd(slot(lo, hi, B_, 3), vload(xp, xo + 48), a1)
                        a0 = vmuladd(slot(lo, hi, B_, 4), vload(xp, xo + 64), a0)
                        a1 = vmuladd(slot(lo, hi, B_, 5), vload(xp, xo + 80), a1)
                        a0 = vmuladd(slot(lo, hi, B_, 6), vload(xp, xo + 96), a0)
                        a1 = vmuladd(slot(lo, hi, B_, 7), vload(xp, xo + 112), a1)
                        sv = vgather(sf, grp, blk * 16) if lane_mode else vsplat(sf[grp[blk]])
                        acc = vmuladd(vadd(a0, a1), sv, acc)
                    total = vsum(acc) - _dot(sz, xs, 0, ng)
                    for t in range(xt.shape[0]):
                        k = kfull + t
                        total += sf[k // G] * np.float32(_code_at(row, k, B_)) * xt[t]
                    y[o] = total
        _unscale(y.reshape((1, out)), exponents)
        return y

    return gemv
