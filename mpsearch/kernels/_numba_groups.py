"""Numba kernels for per-group mixed widths (imports numba; loaded lazily by
:mod:`mpsearch.kernels.groups_cpu`). Layout: :mod:`mpsearch.kernels.packing_groups`.

``gemv`` walks each row group by group; a group of width b is decoded 128 codes at a time with
the one-width kernel's block code (:mod:`mpsearch.kernels._numba_kernels`: 16 eight-code chunks
in 16 lanes), branching on b once per group, so a row costs what its groups would cost at their
widths. x is prepared once per width present (each width scales its slots differently); the
codes past the last whole 128-code block of a row are decoded one by one. Needs groups of a
multiple of 128 codes (or one group per row); ``gemv_any`` handles any G, one code at a time.

``dequantize`` writes ``(code - zero) * scale`` (the reference formula, bit-exact) into a
caller's float32 (out, K) array (or, in its ``_bf16`` variants, uint16 bfloat16 bit patterns),
each group with the one-width decoder's loop for its width
(:func:`mpsearch.kernels._numba_dequant.decode_run`), branching on the width once per group.

Rows are summed in a fixed order by one thread each: deterministic for any thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mpsearch.kernels._chunk_slots import slot_exponents
from mpsearch.kernels._numba_dequant import decode_run, round_bf16
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
    """x in block order for each width present, zero-padded to whole 128-code blocks:
    xp (9, ceil(K/128) * 128), group sums, exponent."""
    K = x.shape[0]
    kp = -(-K // 128) * 128
    xpad = np.zeros((1, kp), np.float32)
    xpad[0, :K] = x
    xp = np.zeros((9, kp), np.float32)
    xs = np.empty(ng, np.float32)
    exponent = np.zeros(1, np.int32)
    for b in range(1, 9):
        if present[b]:
            p, _, s, e = prepare_x(xpad, _slot_scales(_EXPS[b]), G, ng)
            xp[b] = p
            xs[:] = s[0]
            exponent[0] = e[0]
    return xp, xs, exponent


@njit(parallel=True, **OPTS)
def gemv(packed, row_off, group_bits, scale, zero, x, G, present, rows_per_task, workers):
    """y = W x, (out,) float32, for G a multiple of 128 (or one group per row of K codes).

    A group's last, partial block is decoded whole: the codes past the group's end (the next
    group's bytes) meet x zero-padded past K, so they add exact zeros. Only a block that would
    read past the end of ``packed`` is decoded code by code.
    """
    out, ng = group_bits.shape
    K = x.shape[0]
    xp, xs, exponent = _prepare(x, present, G, ng)
    end = packed.shape[0]
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
                p = row_off[o]
                for g in range(ng):
                    b = np.int64(group_bits[o, g])
                    k0 = g * G
                    length = min(G, K - k0)
                    nb = (length * b + 7) // 8
                    s = scale_at(scale[o], g)
                    xb = xp[b]
                    part = vzero()
                    for i in range((length + 127) // 128):
                        off = p + i * 16 * b
                        if off + 16 * b <= end:
                            part = vadd(part, _block(b, packed, off, xb, k0 + 128 * i))
                        else:
                            part = vadd(part, _tail_block(packed[p:p + nb], i, length, b,
                                                          xb, k0 + 128 * i))
                    acc = vmuladd(part, vsplat(s), acc)
                    corr += s * np.float32(zero[o, g]) * xs[g]
                    p += nb
                y[o] = vsum(acc) - corr
    _unscale(y.reshape((1, out)), exponent)
    return y


@njit(**OPTS)
def _tail_block(grp, i, length, b, xb, xo):
    """The 16-lane partial products of block i of a group, code by code (lane l, slot j holds
    code 8l + j times x in the kernel's slot scaling, as the block code does)."""
    acc = np.zeros(16, np.float32)
    for t in range(128 * i, min(length, 128 * i + 128)):
        r = t - 128 * i
        lane, j = r // 8, r % 8
        acc[lane] += np.float32(_code_at(grp, t, b)) * np.float32(2.0 ** _EXPS[b][j]) \
            * xb[xo + 16 * j + lane]
    return vload(acc, 0)


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


def _make_dequantize(parallel: bool, bf16: bool = False):
    """``dequantize`` on Numba's threads (``parallel``) or on the calling thread (a small weight
    decodes in microseconds, less than waking the threads takes); with ``bf16`` into a uint16
    ``out`` of bfloat16 bit patterns, each value rounded to nearest even."""

    @njit_as(f"group_dequantize{'p' if parallel else 's'}{'b' if bf16 else ''}", parallel=parallel,
             **OPTS)
    def dequantize(packed, row_off, group_bits, scale32, zero, G, out):
        """out[o, k] = (code - zero) * scale for every weight (the reference formula, in float32
        or as bfloat16 bit patterns)."""
        rows, K = out.shape
        ng = group_bits.shape[1]
        for chunk in prange((rows + 15) // 16):  # 16 rows per task share one float buffer
            buf = np.empty(min(G, K) if bf16 else 0, np.float32)
            buf_bits = buf.view(np.uint32)
            for o in range(16 * chunk, min(rows, 16 * chunk + 16)):
                p = row_off[o]
                dst = out[o]
                for g in range(ng):
                    b = np.int64(group_bits[o, g])
                    k0 = g * G
                    n = min(G, K - k0)
                    s = scale32[o, g]
                    z = np.float32(zero[o, g])
                    nb = (n * b + 7) // 8
                    grp = packed[p:p + nb]  # every group starts on a byte
                    if bf16:
                        done = decode_run(grp, b, n, z, s, buf)
                        for t in range(done, n):
                            buf[t] = (np.float32(_code_at(grp, t, b)) - z) * s
                        round_bf16(buf_bits, n, dst[k0:])
                    else:
                        done = decode_run(grp, b, n, z, s, dst[k0:])
                        for t in range(done, n):
                            dst[k0 + t] = (np.float32(_code_at(grp, t, b)) - z) * s
                    p += nb

    return dequantize


dequantize = _make_dequantize(True)
dequantize_serial = _make_dequantize(False)
dequantize_bf16 = _make_dequantize(True, bf16=True)
dequantize_serial_bf16 = _make_dequantize(False, bf16=True)
