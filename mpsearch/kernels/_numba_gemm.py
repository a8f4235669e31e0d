"""The small-batch Numba kernels behind :func:`mpsearch.kernels.numba_cpu.gemm` (imports numba).

They share the decode and x preparation of :mod:`mpsearch.kernels._numba_kernels` (see its
docstring for the block layout). Numba keys its disk cache on this file only: after editing
``_numba_kernels.py``, ``_numba_simd.py`` or ``_chunk_slots.py``, touch this file too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from mpsearch.kernels._chunk_slots import slot_exponents
from mpsearch.kernels._numba_kernels import (
    _code_at,
    _dot,
    _group_index,
    _row_scales,
    _slot_scales,
    _unscale,
    prepare_x,
)
from mpsearch.kernels._numba_simd import (
    OPTS,
    fetch_add,
    load_chunks,
    njit_as,
    scale_at,
    slot,
    vadd,
    vgather,
    vload,
    vmul,
    vmuladd,
    vsplat,
    vstore,
    vsum,
    vzero,
)

ROW_TILE = 8  # rows that share each load of x in the batched kernel


def make_gemm(bits: int) -> Callable:
    """The small-batch kernel for one width.

    Rows go in tiles of ``ROW_TILE``: a block of each row's codes is decoded once (times its
    scale) into a small buffer, then every batch row's slice of x is loaded once and used for
    the whole tile, so x streams from L2 ``ROW_TILE`` times less often.
    """
    B_, BLK, HI, R = bits, 16 * bits, int(bits > 4), ROW_TILE
    EXPS = tuple(slot_exponents(bits))

    @njit_as(f"gemm{bits}", parallel=True, **OPTS)
    def gemm(packed, scale, zero, x, G, lane_mode, rows_per_task, workers):
        out = packed.shape[0]
        ng = scale.shape[1]
        xp, xt, xs, exponents = prepare_x(x, _slot_scales(EXPS), G, ng)
        nb, ntail = xs.shape[0], xt.shape[1]
        nblk = xp.shape[0] // (nb * 128)
        kfull = nblk * 128
        xsf = xs.reshape(nb * ng)
        grp = _group_index(nblk, G, lane_mode)
        y = np.empty((nb, out), np.float32)
        ntasks = (out + rows_per_task - 1) // rows_per_task
        claimed = np.empty(1, np.int64)  # not np.zeros: that would be a parallel loop
        claimed[0] = 0
        for _ in prange(workers):  # one per thread; tasks are claimed, not preassigned
            sf = np.empty((R, ng), np.float32)
            sz = np.empty((R, ng), np.float32)
            cs = np.empty(R * 128, np.float32)
            accs = np.empty(R * nb * 16, np.float32)
            tw = np.empty(ntail, np.float32)
            while True:
                task = fetch_add(claimed, 0, 1)
                if task >= ntasks:
                    break
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
                            sv = vgather(sf[r], grp, blk * 16) if lane_mode \
                                else vsplat(sf[r, grp[blk]])
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
        _unscale(y, exponents)
        return y

    return gemm


@njit(parallel=True, **OPTS)
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
