"""Numba kernels behind :mod:`mpsearch.kernels.numba_cpu` (imports numba; loaded lazily).

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

Each width gets its own compiled kernel (``bits`` is a compile-time constant), cached on disk
next to this file. Numba keys that cache on this file only: after editing ``_numba_simd.py``
or ``_chunk_slots.py``, delete ``__pycache__/*.nbi`` / ``*.nbc`` (or touch this file).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit, prange

from mpsearch.kernels._numba_simd import (
    load_chunks,
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

_OPTS = {"fastmath": False, "cache": True}
ROW_TILE = 8  # rows that share each load of x in the batched kernel


@njit(inline="always", **_OPTS)
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


@njit(inline="always", **_OPTS)
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


@njit(inline="always", **_OPTS)
def _code_at(row, k, bits):
    """Code k of a packed row (little-endian bit stream), read from at most two bytes."""
    bit = k * bits
    p = bit >> 3
    v = np.int64(row[p])
    if p + 1 < row.shape[0]:
        v |= np.int64(row[p + 1]) << 8
    return (v >> (bit & 7)) & ((1 << bits) - 1)


@njit(**_OPTS)
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
        amax = np.float32(0)
        for k in range(K):
            amax = max(amax, abs(x[b, k]))
        mult = np.float32(1)
        if 0 < amax < 2.0 ** -64:
            exponents[b] = -math.frexp(amax)[1]
            mult = np.float32(math.ldexp(1.0, exponents[b]))
        for g in range(n_groups):
            acc = 0.0
            for k in range(g * group, min(K, (g + 1) * group)):
                acc += np.float64(x[b, k] * mult)
            xs[b, g] = acc
        for blk in range(nblk):
            base, src = (blk * nb + b) * 128, blk * 128
            for j in range(8):
                s = mult * slot_scale[j]
                for lane in range(16):
                    xp[base + 16 * j + lane] = x[b, src + 8 * lane + j] * s
        for t in range(K - kfull):
            xt[b, t] = x[b, kfull + t] * mult
    return xp, xt, xs, exponents


def make_gemv(bits: int) -> Callable:
    """The batch-1 kernel for one width: y[o] for every row, rows in parallel."""
    B_, BLK, HI = bits, 16 * bits, int(bits > 4)

    @njit(parallel=True, **_OPTS)
    def gemv(packed, scale, zero, xp, xs, xt, grp, lane_mode, G, rows_per_task, y):
        out = packed.shape[0]
        nblk = xp.shape[0] // 128
        ng = scale.shape[1]
        kfull = nblk * 128
        for task in prange((out + rows_per_task - 1) // rows_per_task):
            sf = np.empty(ng, np.float32)
            sz = np.empty(ng, np.float32)
            for o in range(task * rows_per_task, min(out, (task + 1) * rows_per_task)):
                row = packed[o]
                _row_scales(scale[o], zero[o], sf, sz)
                acc = vzero()
                for blk in range(nblk):
                    lo = load_chunks(row, blk * BLK, B_, 0)
                    hi = load_chunks(row, blk * BLK, B_, HI)  # same as lo (merged) if bits <= 4
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

    return gemv


def make_gemm(bits: int) -> Callable:
    """The small-batch kernel for one width.

    Rows go in tiles of ``ROW_TILE``: a block of each row's codes is decoded once (times its
    scale) into a small buffer, then every batch row's slice of x is loaded once and used for
    the whole tile, so x streams from L2 ``ROW_TILE`` times less often.
    """
    B_, BLK, HI, R = bits, 16 * bits, int(bits > 4), ROW_TILE

    @njit(parallel=True, **_OPTS)
    def gemm(packed, scale, zero, xp, xs, xt, grp, lane_mode, G, rows_per_task, y):
        out = packed.shape[0]
        nb, ng, ntail = xs.shape[0], scale.shape[1], xt.shape[1]
        nblk = xp.shape[0] // (nb * 128)
        kfull = nblk * 128
        xsf = xs.reshape(nb * ng)
        for task in prange((out + rows_per_task - 1) // rows_per_task):
            sf = np.empty((R, ng), np.float32)
            sz = np.empty((R, ng), np.float32)
            cs = np.empty(R * 128, np.float32)
            accs = np.empty(R * nb * 16, np.float32)
            tw = np.empty(ntail, np.float32)
            t1 = min(out, (task + 1) * rows_per_task)
            for o0 in range(task * rows_per_task, t1, R):
                nr = min(R, t1 - o0)
                for r in range(nr):
                    _row_scales(scale[o0 + r], zero[o0 + r], sf[r], sz[r])
                for i in range(nr * nb):
                    vstore(accs, i * 16, vzero())
                for blk in range(nblk):
                    for r in range(nr):
                        row = packed[o0 + r]
                        lo = load_chunks(row, blk * BLK, B_, 0)
                        hi = load_chunks(row, blk * BLK, B_, HI)
                        sv = vgather(sf[r], grp, blk * 16) if lane_mode else vsplat(sf[r, grp[blk]])
                        co = r * 128
                        vstore(cs, co, vmul(slot(lo, hi, B_, 0), sv))
                        vstore(cs, co + 16, vmul(slot(lo, hi, B_, 1), sv))
                        vstore(cs, co + 32, vmul(slot(lo, hi, B_, 2), sv))
                        vstore(cs, co + 48, vmul(slot(lo, hi, B_, 3), sv))
                        vstore(cs, co + 64, vmul(slot(lo, hi, B_, 4), sv))
                        vstore(cs, co + 80, vmul(slot(lo, hi, B_, 5), sv))
                        vstore(cs, co + 96, vmul(slot(lo, hi, B_, 6), sv))
                        vstore(cs, co + 112, vmul(slot(lo, hi, B_, 7), sv))
                    for b in range(nb):
                        xo = (blk * nb + b) * 128
                        x0, x1 = vload(xp, xo), vload(xp, xo + 16)
                        x2, x3 = vload(xp, xo + 32), vload(xp, xo + 48)
                        x4, x5 = vload(xp, xo + 64), vload(xp, xo + 80)
                        x6, x7 = vload(xp, xo + 96), vload(xp, xo + 112)
                        for r in range(nr):
                            co, ao = r * 128, (r * nb + b) * 16
                            a0 = vmuladd(vload(cs, co), x0, vload(accs, ao))
                            a1 = vmul(vload(cs, co + 16), x1)
                            a0 = vmuladd(vload(cs, co + 32), x2, a0)
                            a1 = vmuladd(vload(cs, co + 48), x3, a1)
                            a0 = vmuladd(vload(cs, co + 64), x4, a0)
                            a1 = vmuladd(vload(cs, co + 80), x5, a1)
                            a0 = vmuladd(vload(cs, co + 96), x6, a0)
                            a1 = vmuladd(vload(cs, co + 112), x7, a1)
                            vstore(accs, ao, vadd(a0, a1))
                for r in range(nr):
                    row = packed[o0 + r]
                    for t in range(ntail):
                        k = kfull + t
                        tw[t] = sf[r, k // G] * np.float32(_code_at(row, k, B_))
                    for b in range(nb):
                        total = vsum(vload(accs, (r * nb + b) * 16)) - _dot(sz[r], xsf, b * ng, ng)
                        for t in range(ntail):
                            total += tw[t] * xt[b, t]
                        y[b, o0 + r] = total

    return gemm


@njit(parallel=True, **_OPTS)
def gemm_any_group(packed, scale, zero, x, bits, G, y):
    """Plain kernel for group sizes the fast kernels cannot take (G not a multiple of 8).

    Dequantizes one row to float32, then dots it with every batch row; x in natural order.
    """
    out = packed.shape[0]
    nb, K = x.shape
    for o in prange(out):
        row = packed[o]
        w = np.empty(K, np.float32)
        for k in range(K):
            g = k // G
            w[k] = (np.float32(_code_at(row, k, bits)) - np.float32(zero[o, g])) \
                * scale_at(scale[o], g)
        for b in range(nb):
            y[b, o] = _dot(w, x[b], 0, K)
