"""A 3-bit batch-1 kernel for AVX-512: the 2-bit LUT kernel, run on two bit planes.

A 3-bit code splits into a 2-bit and a 1-bit plane, ``c = lo + 4 * hi``, so

    sum_k c_k x_k = sum_k lo_k x_k + 4 * sum_k hi_k x_k.

The lo plane is a 2-bit weight and uses the pair tables and lookups of
:mod:`mpsearch.kernels._numba_lut` (one ``vpermps`` per 2 positions). The hi plane is a 1-bit
weight: four hi bits form one index into a 16-entry table per quad of positions (one lookup per
4 positions), with the factor 4 folded in (exact in float)::

    T2[p][c0 + 4*c1]                  = c0 * x[2p] + c1 * x[2p+1]       (as in the 2-bit kernel)
    T1[q][b0 + 2*b1 + 4*b2 + 8*b3]    = 4 * (b0 x[4q] + b1 x[4q+1] + b2 x[4q+2] + b3 x[4q+3])

Weights, rearranged once by :func:`prepare_lut3` from the standard packed 3-bit rows: tiles of
16 rows; for each tile and each run of 32 K-positions, three 64-byte vectors (lane r = row
16*tile + r), still 3 bits per code::

    idx[tile, run, 0, r]   nibble j = lo(2p) + 4 lo(2p+1),  p = 16*run + j       (positions 0..15)
    idx[tile, run, 1, r]   nibble j = the same for p = 16*run + 8 + j            (positions 16..31)
    idx[tile, run, 2, r]   nibble j = hi(4q) + 2 hi(4q+1) + 4 hi(4q+2) + 8 hi(4q+3),  q = 8*run + j

Per run and tile: 24 shift + permute + add steps for 16 x 32 codes, into 4 chains. The tables,
lookups and driver (K-blocks kept in L1 across the tiles of a task, two tiles per table load,
prefetching, group folding, task claiming) are shared with the 2- and 4-bit kernels
(:mod:`mpsearch.kernels._numba_lut_common`, `_numba_lut_driver`). Deterministic for any thread
count and task size. Needs AVX-512F, K a multiple of 32 and G (if given) a multiple of 32: the
hi plane's words cover 32 positions; no tail is handled.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 32), 7, np.uint8)
>>> w = prepare_lut3(pack(codes, 3), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=32, G=None)
>>> gemv_lut3(w, np.ones(32, np.float32)) if is_supported(32, None) else np.full(3, 96.0)
array([96., 96., 96.], dtype=float32)
"""

from __future__ import annotations

import numpy as np

from mpsearch.kernels._numba_lut_common import (
    AHEAD,
    LutWeights,
    prepare,
    run,
    supported,
)
from mpsearch.kernels._numba_lut_driver import make_gemv
from mpsearch.kernels.packing import pack, unpack

RUN = 32  # K-positions per run: one hi-plane word
BLOCK_RUNS = 8  # runs per K-block: 8 + 4 KiB of tables, reused from L1 by a task


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 32."""
    return supported(K, G, RUN)


def _plane_words(packed: np.ndarray) -> np.ndarray:
    """(rows, 3K/8) packed 3-bit bytes -> (rows, K/32, 3) uint32: two lo words, one hi word."""
    rows, K = packed.shape[0], packed.shape[1] * 8 // 3
    codes = unpack(packed, 3, K)
    lo = pack(codes & 3, 2).view("<u4").reshape(rows, K // RUN, 2)  # nibble = pair of positions
    hi = pack(codes >> 2, 1).view("<u4").reshape(rows, K // RUN, 1)  # nibble = quad of positions
    return np.concatenate([lo, hi], axis=2)


def prepare_lut3(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int,
                 G: int | None, block_runs: int = BLOCK_RUNS,
                 tiles_per_task: int = 16) -> LutWeights:
    """Rearrange a packed 3-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel,
    once, offline (arguments: :func:`~mpsearch.kernels._numba_lut_common.prepare`)."""
    return prepare(packed, scale, zero, K, G, 3, RUN, _plane_words, block_runs, tiles_per_task)


driver = make_gemv(3)  # the jitted kernel; see bind for calling it without checks


def gemv_lut3(prepared: LutWeights, x: np.ndarray, workers: int = 1,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut3` and x (K,) float32
    (knobs: :func:`~mpsearch.kernels._numba_lut_common.run`)."""
    return run(driver, prepared, x, workers, ahead)
