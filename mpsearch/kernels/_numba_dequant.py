"""Numba kernel that dequantizes a packed weight into a caller's float32 array (imports numba;
loaded lazily by :mod:`mpsearch.kernels.dequant`).

One compiled kernel per width (``bits`` a compile-time constant, so the shifts and masks fold).
Each group of a row first gets a table of its ``2^bits`` values, ``(float32(code) -
float32(zero)) * float32(scale)``, the reference formula of
:func:`mpsearch.kernels.quantize.dequantize` (so results are bit-exact); decoding is then one
lookup per code. At 1, 2, 4 and 8 bits a byte holds whole codes and is read once; other widths
read eight codes at a time (a chunk of eight codes is exactly ``bits`` bytes,
:mod:`mpsearch.kernels.packing`, read as one little-endian integer), and codes of a chunk that
straddles a group edge one by one. On 2 cores this decodes 0.30-0.45 ns per weight (2 and 4
bits, 384-1536 wide rows), against 0.64-1.0 ns with the formula per code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numba import prange

from mpsearch.kernels._numba_kernels import _code_at
from mpsearch.kernels._numba_simd import OPTS, njit_as


@cache
def make_dequantize(bits: int, parallel: bool, bf16: bool = False) -> Callable:
    """The kernel ``(packed, scale32, zero, group, out) -> None`` for one width; rows split
    over Numba's threads if ``parallel`` (worth it for large weights only: a small one is
    decoded in microseconds, less than waking the threads takes). With ``bf16`` ``out`` is
    uint16 and receives bfloat16 bit patterns: each table value rounded to nearest even from
    its float32 value, as ``tensor.to(torch.bfloat16)`` rounds (finite values)."""
    mask = (1 << bits) - 1
    levels = 1 << bits
    per_byte = 8 // bits if 8 % bits == 0 else 0  # whole codes per byte, or 0

    @njit_as(f"dequantize{bits}{'p' if parallel else 's'}{'b' if bf16 else ''}", parallel=parallel,
             **OPTS)
    def dequantize(packed, scale, zero, group, out):
        rows, K = out.shape
        for chunk in prange((rows + 15) // 16):  # 16 rows per task share one table buffer
            values = np.empty(levels, np.float32)
            value_bits = values.view(np.uint32)
            table = np.empty(levels, out.dtype)
            for o in range(16 * chunk, min(rows, 16 * chunk + 16)):
                row = packed[o]
                dst = out[o]
                g0 = 0
                while g0 < K:
                    g1 = min(g0 + group, K)
                    gi = g0 // group
                    s = np.float32(scale[o, gi])
                    z = np.float32(zero[o, gi])
                    fill_table(values, value_bits, table, levels, z, s, bf16)
                    k = g0
                    if per_byte:
                        while k < g1 and k % per_byte:  # a group that starts inside a byte
                            dst[k] = table[(row[k // per_byte] >> ((k % per_byte) * bits)) & mask]
                            k += 1
                        for i in range(k // per_byte, g1 // per_byte):
                            v = row[i]
                            for j in range(per_byte):
                                dst[i * per_byte + j] = table[(v >> (j * bits)) & mask]
                        k = max(k, g1 // per_byte * per_byte)
                    else:
                        c0 = (k + 7) // 8
                        while k < min(8 * c0, g1):  # codes before the first whole chunk
                            dst[k] = table[_code_at(row, k, bits)]
                            k += 1
                        for c in range(c0, g1 // 8):
                            word = np.uint64(0)
                            for b in range(bits):
                                word |= np.uint64(row[c * bits + b]) << np.uint64(8 * b)
                            for j in range(8):
                                dst[8 * c + j] = table[(word >> np.uint64(j * bits)) & np.uint64(mask)]
                        k = max(k, g1 // 8 * 8)
                    while k < g1:  # codes after the last whole byte or chunk of the group
                        dst[k] = table[_code_at(row, k, bits)]
                        k += 1
                    g0 = g1

    return dequantize


@njit_as("dequantize_table", inline="always", **OPTS)
def fill_table(values, value_bits, table, levels, z, s, bf16):
    """``table[c]`` for codes ``c < levels``: ``(float32(c) - z) * s``, the reference formula,
    or (``bf16``) its bfloat16 bit pattern, rounded to nearest even. ``value_bits`` is
    ``values`` (float32 scratch) viewed as uint32. Also inlined into the per-group decoder
    (:mod:`mpsearch.kernels._numba_groups`): Numba's disk cache keys on each function's own
    file, so after editing this one touch that file too."""
    for c in range(levels):
        values[c] = (np.float32(c) - z) * s
        if bf16:
            u = value_bits[c]
            table[c] = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        else:
            table[c] = values[c]
