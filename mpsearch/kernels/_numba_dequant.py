"""Numba kernel that dequantizes a packed weight into a caller's float32 array (imports numba;
loaded lazily by :mod:`mpsearch.kernels.dequant`).

One compiled kernel per width (``bits`` a compile-time constant). Every code becomes
``(float32(code) - float32(zero)) * float32(scale)``, the reference formula of
:func:`mpsearch.kernels.quantize.dequantize`, so results are bit-exact. The loops over a group
are written out per width (:func:`decode_run`: two stores per byte at 4 bits, four at 2, eight
per 3-byte word at 3, ...), with constant shifts and masks, which LLVM turns into vector code;
codes of a group that does not start on a byte, and those after its last whole byte or word,
are decoded one by one. On 2 cores (1536 x 384, groups of 128) this decodes 0.07-0.17 ns per
weight at 2, 4 and 8 bits into float32, against 0.33-0.67 ns with one table lookup per code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numba import prange

from mpsearch.kernels._numba_kernels import _code_at
from mpsearch.kernels._numba_simd import OPTS, njit_as


@njit_as("decode_run", inline="always", **OPTS)
def decode_run(src, b, n, z, s, out):
    """``out[t] = (float32(code t) - z) * s`` for the first codes of the ``n`` ``b``-bit codes
    at the start of ``src`` (a row's bytes from the group's first): every code in whole bytes
    (1, 2, 4, 8 bits) or in whole eight-code words of ``b`` bytes (other widths). Returns how
    many it decoded; the caller decodes the rest. ``src`` and ``out`` are views that start at
    the group: indices counted from 0 let LLVM vectorize the loops (an offset added to each
    index, which Numba must check for negative values, kept them scalar, 4x slower). Also
    inlined into the per-group decoder (:mod:`mpsearch.kernels._numba_groups`): Numba's disk
    cache keys on each function's own file, so after editing this one touch that file too."""
    if b == 4:
        for i in range(n // 2):
            v = src[i]
            out[2 * i] = (np.float32(v & 15) - z) * s
            out[2 * i + 1] = (np.float32(v >> 4) - z) * s
        return n // 2 * 2
    if b == 2:
        for i in range(n // 4):
            v = src[i]
            out[4 * i] = (np.float32(v & 3) - z) * s
            out[4 * i + 1] = (np.float32((v >> 2) & 3) - z) * s
            out[4 * i + 2] = (np.float32((v >> 4) & 3) - z) * s
            out[4 * i + 3] = (np.float32(v >> 6) - z) * s
        return n // 4 * 4
    if b == 8:
        for i in range(n):
            out[i] = (np.float32(src[i]) - z) * s
        return n
    if b == 3:
        for c in range(n // 8):
            w = np.uint32(src[3 * c]) | (np.uint32(src[3 * c + 1]) << 8) \
                | (np.uint32(src[3 * c + 2]) << 16)
            out[8 * c] = (np.float32(w & 7) - z) * s
            out[8 * c + 1] = (np.float32((w >> 3) & 7) - z) * s
            out[8 * c + 2] = (np.float32((w >> 6) & 7) - z) * s
            out[8 * c + 3] = (np.float32((w >> 9) & 7) - z) * s
            out[8 * c + 4] = (np.float32((w >> 12) & 7) - z) * s
            out[8 * c + 5] = (np.float32((w >> 15) & 7) - z) * s
            out[8 * c + 6] = (np.float32((w >> 18) & 7) - z) * s
            out[8 * c + 7] = (np.float32(w >> 21) - z) * s
        return n // 8 * 8
    if b == 1:
        for i in range(n // 8):
            v = src[i]
            for j in range(8):
                out[8 * i + j] = (np.float32((v >> j) & 1) - z) * s
        return n // 8 * 8
    mask = np.uint64((1 << b) - 1)
    for c in range(n // 8):
        word = np.uint64(0)
        for i in range(b):
            word |= np.uint64(src[c * b + i]) << np.uint64(8 * i)
        for j in range(8):
            out[8 * c + j] = (np.float32((word >> np.uint64(j * b)) & mask) - z) * s
    return n // 8 * 8


@njit_as("round_bf16", inline="always", **OPTS)
def round_bf16(values, n, out):
    """``out[t]``: the bfloat16 bit pattern of float32 ``values[t]`` (given as uint32 bits),
    rounded to nearest even, as ``tensor.to(torch.bfloat16)`` rounds finite values."""
    for t in range(n):
        u = values[t]
        out[t] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                           >> np.uint32(16))


@cache
def make_dequantize(bits: int, parallel: bool, bf16: bool = False) -> Callable:
    """The kernel ``(packed, scale32, zero, group, out) -> None`` for one width; rows split
    over Numba's threads if ``parallel`` (worth it for large weights only: a small one is
    decoded in microseconds, less than waking the threads takes). With ``bf16`` ``out`` is
    uint16 and receives bfloat16 bit patterns: each float32 value rounded to nearest even."""

    @njit_as(f"dequantize{bits}{'p' if parallel else 's'}{'b' if bf16 else ''}", parallel=parallel,
             **OPTS)
    def dequantize(packed, scale, zero, group, out):
        rows, K = out.shape
        for chunk in prange((rows + 15) // 16):  # 16 rows per task share one float buffer
            buf = np.empty(min(group, K) if bf16 else 0, np.float32)
            buf_bits = buf.view(np.uint32)
            for o in range(16 * chunk, min(rows, 16 * chunk + 16)):
                row = packed[o]
                dst = out[o]
                for gi in range((K + group - 1) // group):
                    k0 = gi * group
                    n = min(group, K - k0)
                    s = np.float32(scale[o, gi])
                    z = np.float32(zero[o, gi])
                    aligned = k0 * bits % 8 == 0
                    if bf16:
                        done = decode_run(row[k0 * bits // 8:], bits, n, z, s, buf) if aligned else 0
                        for t in range(done, n):
                            buf[t] = (np.float32(_code_at(row, k0 + t, bits)) - z) * s
                        round_bf16(buf_bits, n, dst[k0:])
                    else:
                        done = decode_run(row[k0 * bits // 8:], bits, n, z, s, dst[k0:]) if aligned else 0
                        for t in range(done, n):
                            dst[k0 + t] = (np.float32(_code_at(row, k0 + t, bits)) - z) * s

    return dequantize
