"""Numba kernel that dequantizes a packed weight into a caller's float32 array (imports numba;
loaded lazily by :mod:`mpsearch.kernels.dequant`).

One compiled kernel per width (``bits`` a compile-time constant, so the shifts and masks fold).
Each row is decoded eight codes at a time: a chunk of eight codes is exactly ``bits`` bytes
(:mod:`mpsearch.kernels.packing`), read as one little-endian integer; the last ``K % 8`` codes
are decoded one by one. Values are ``(float32(code) - float32(zero)) * float32(scale)``, the
reference formula of :func:`mpsearch.kernels.quantize.dequantize`, so results are bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numba import prange

from mpsearch.kernels._numba_simd import OPTS, njit_as


@cache
def make_dequantize(bits: int, parallel: bool) -> Callable:
    """The kernel ``(packed, scale32, zero, group, out) -> None`` for one width; rows split
    over Numba's threads if ``parallel`` (worth it for large weights only: a small one is
    decoded in microseconds, less than waking the threads takes)."""
    mask = (1 << bits) - 1

    @njit_as(f"dequantize{bits}{'p' if parallel else 's'}", parallel=parallel, **OPTS)
    def dequantize(packed, scale, zero, group, out):
        rows, K = out.shape
        whole = K // 8
        for o in prange(rows):
            row = packed[o]
            dst = out[o]
            for c in range(whole):
                word = np.uint64(0)
                base = c * bits
                for b in range(bits):
                    word |= np.uint64(row[base + b]) << np.uint64(8 * b)
                k0 = 8 * c
                g = k0 // group
                s = np.float32(scale[o, g])
                z = np.float32(zero[o, g])
                if (k0 + 7) // group == g:  # the whole chunk in one group
                    for j in range(8):
                        code = (word >> np.uint64(j * bits)) & np.uint64(mask)
                        dst[k0 + j] = (np.float32(code) - z) * s
                else:
                    for j in range(8):
                        k = k0 + j
                        code = (word >> np.uint64(j * bits)) & np.uint64(mask)
                        dst[k] = (np.float32(code) - np.float32(zero[o, k // group])) \
                            * np.float32(scale[o, k // group])
            for k in range(8 * whole, K):
                bit = k * bits
                p = bit >> 3
                v = np.int64(row[p])
                if p + 1 < row.shape[0]:
                    v |= np.int64(row[p + 1]) << 8
                code = (v >> (bit & 7)) & mask
                g = k // group
                dst[k] = (np.float32(code) - np.float32(zero[o, g])) * np.float32(scale[o, g])

    return dequantize
