"""Numba kernels for per-group mixed widths (imports numba; loaded lazily by
:mod:`mpsearch.kernels.groups_cpu`). Layout: :mod:`mpsearch.kernels.packing_groups`.

``gemv`` walks each row group by group; a group of width b is decoded 128 codes at a time with
the one-width kernel's block code (:mod:`mpsearch.kernels._numba_kernels`: 16 eight-code chunks
in 16 lanes), branching on b once per group, so a row costs what its groups would cost at their
widths. x is prepared once per width present (each width scales its slots differently); the
codes past the last whole 128-code block of a row are decoded one by one. Needs groups of a
multiple of 128 codes (or one group per row); ``gemv_any`` handles any G, one code at a time.

``dequantize`` writes ``(code - zero) * scale`` (the reference formula, bit-exact) into a
caller's float32 (out, K) array, eight codes per little-endian word of b bytes.

Rows are summed in a fixed order by one thread each: deterministic for any thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mpsearch.kernels._chunk_slots import slot_exponents
from mpsearch.kernels._numba_kernels import _code_at, _slot_scales, _unscale, prepare_x
from mpsearch.kernels._numba_simd import (
    OPTS,
    fetch_add,
    load_chunks,
    njit_as,
    scale_at,
    slot,
    vadd,
    vload,
    vmul,
    vmuladd,
    vsplat,
    vsum,
    vzero,
)


def _make_block(bits: int):
    """``block(packed, off, xp, xo)``: the 16-lane partial products of one 128-code block."""
    B_, HI = bits, int(bits > 4)

    @njit_as(f"group_block{bits}", inline="always", **OPTS)
    def block(packed, off, xp, xo):
        lo = load_chunks(packed, off, B_, 0)
        hi = load_chunks(packed, off, B_, HI)
        a0 = vmul(slot(lo, hi, B_, 0), vload(xp, xo))
        a1 = vmul(slot(lo, hi, B_, 1), vload(xp, xo + 16))
        a0 = vmuladd(slot(lo, hi, B_, 2), vload(xp, xo + 32), a0)
        a1 = vmuladd(slot(lo, hi, B_, 3), vload(xp, xo + 48), a1)
        a0 = vmuladd(slot(lo, hi, B_, 4), vload(xp, xo + 64), a0)
        a1 = vmuladd(slot(lo, hi, B_, 5), vload(xp, xo + 80), a1)
        a0 = vmuladd(slot(lo, hi, B_, 6), vload(xp, xo + 96), a0)
        a1 = vmuladd(slot(lo, hi, B_, 7), vload(xp, xo + 112), a1)
        return vadd(a0, a1)
    return block


_B1, _B2, _B3, _B4, _B5, _B6, _B7, _B8 = (_make_block(b) for b in range(1, 9))
_EXPS = np.array([slot_exponents(b) if b else [0] * 8 for b in range(9)], np.int64)


@njit(inline="always", **OPTS)
def _block(b, packed, off, xp, xo):
    if b == 2:
        return _B2(packed, off, xp, xo)
    if b == 3:
        return _B3(packed, off, xp, xo)
    if b == 4:
        return _B4(packed, off, xp, xo)
    if b == 8:
        return _B8(packed, off, xp, xo)
    if b == 1:
        return _B1(packed, off, xp, xo)
    if b == 5:
        return _B5(packed, off, xp, xo)
    if b == 6:
        return _B6(packed, off, xp, xo)
    return _B7(packed, off, xp, xo)


@njit(**OPTS)
def _prepare(x, present, G, ng):
    """x in block order for each width present: xp (9, K//128 * 128), tail, group sums, exponent."""
    K = x.shape[0]
    x2 = x.reshape((1, K))
    xp = np.zeros((9, (K // 128) * 128), np.float32)
    xt = np.empty(K - (K // 128) * 128, np.float32)
    xs = np.empty(ng, np.float32)
    exponent = np.zeros(1, np.int32)
    for b in range(1, 9):
        if present[b]:
            p, t, s, e = prepare_x(x2, _slot_scales(_EXPS[b]), G, ng)
            xp[b] = p
            xt[:] = t[0]
            xs[:] = s[0]
            exponent[0] = e[0]
    return xp, xt, xs, exponent


@njit(parallel=True, **OPTS)
def gemv(packed, row_off, group_bits, scale, zero, x, G, present, rows_per_task, workers):
    """y = W x, (out,) float32, for G a multiple of 128 (or one group per row of K codes)."""
    out, ng = group_bits.shape
    K = x.shape[0]
    xp, xt, xs, exponent = _prepare(x, present, G, ng)
    kfull = K - xt.shape[0]
    y = np.empty(out, np.float32)
    ntasks = (out + rows_per_task - 1) // rows_per_task
    claimed = np.empty(1, np.int64)
    claimed[0] = 0
    for _ in prange(workers):
        while True:
            task = fetch_add(claimed, 0, 1)
            if task >= ntasks:
                break
            for o in range(task * rows_per_task, min(out, (task + 1) * rows_per_task)):
                acc = vzero()
                corr = np.float32(0)
                tail = np.float32(0)
                p = row_off[o]
                for g in range(ng):
                    b = np.int64(group_bits[o, g])
                    k0 = g * G
                    length = min(G, K - k0)
                    nblk = length // 128
                    s = scale_at(scale[o], g)
                    part = vzero()
                    for i in range(nblk):
                        part = vadd(part, _block(b, packed, p + i * 16 * b, xp[b], k0 + 128 * i))
                    acc = vmuladd(part, vsplat(s), acc)
                    corr += s * np.float32(zero[o, g]) * xs[g]
                    nb = (length * b + 7) // 8
                    for t in range(nblk * 128, length):
                        code = _code_at(packed[p:p + nb], t, b)
                        tail += s * np.float32(code) * xt[k0 + t - kfull]
                    p += nb
                y[o] = vsum(acc) - corr + tail
    _unscale(y.reshape((1, out)), exponent)
    return y


@njit(parallel=True, **OPTS)
def gemv_any(packed, row_off, group_bits, scale32, zero, x, G):
    """y = W x for any group size: codes decoded one by one (float32, fixed order)."""
    out, ng = group_bits.shape
    K = x.shape[0]
    y = np.empty(out, np.float32)
    for o in prange(out):
        total = np.float32(0)
        p = row_off[o]
        for g in range(ng):
            b = np.int64(group_bits[o, g])
            k0 = g * G
            length = min(G, K - k0)
            nb = (length * b + 7) // 8
            grp = packed[p:p + nb]
            z = np.float32(zero[o, g])
            part = np.float32(0)
            for t in range(length):
                part += (np.float32(_code_at(grp, t, b)) - z) * x[k0 + t]
            total += scale32[o, g] * part
            p += nb
        y[o] = total
    return y


@njit(parallel=True, **OPTS)
def dequantize(packed, row_off, group_bits, scale32, zero, G, out):
    """out[o, k] = (code - zero) * scale for every weight (float32, the reference formula)."""
    rows, K = out.shape
    ng = group_bits.shape[1]
    for o in prange(rows):
        p = row_off[o]
        dst = out[o]
        for g in range(ng):
            b = np.int64(group_bits[o, g])
            mask = np.uint64((1 << b) - 1)
            k0 = g * G
            length = min(G, K - k0)
            s = scale32[o, g]
            z = np.float32(zero[o, g])
            whole = length // 8
            for c in range(whole):
                word = np.uint64(0)
                base = p + c * b
                for i in range(b):
                    word |= np.uint64(packed[base + i]) << np.uint64(8 * i)
                for j in range(8):
                    code = (word >> np.uint64(j * b)) & mask
                    dst[k0 + 8 * c + j] = (np.float32(code) - z) * s
            nb = (length * b + 7) // 8
            grp = packed[p:p + nb]
            for t in range(8 * whole, length):
                dst[k0 + t] = (np.float32(_code_at(grp, t, b)) - z) * s
            p += nb
