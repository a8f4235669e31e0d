"""A 4-bit batch-1 kernel for AVX-512: the 2-bit LUT kernel, run on two 2-bit planes.

A 4-bit code splits into two 2-bit planes, ``c = lo + 4 * hi`` (``lo = c & 3``, ``hi = c >> 2``),
so

    sum_k c_k x_k = sum_k lo_k x_k + 4 * sum_k hi_k x_k.

Both planes are 2-bit weights and index the same pair tables of
:mod:`mpsearch.kernels._numba_lut`, ``T2[p][c0 + 4*c1] = c0 * x[2p] + c1 * x[2p+1]``: each table
serves four lookups (lo and hi plane, two tiles). The planes keep separate accumulators; a
K-block's part of a group is combined as ``s_lo + 4 * s_hi`` (times 4 is exact) before it is
folded into the row totals.

Weights, rearranged once by :func:`prepare_lut4` from the standard packed 4-bit rows: tiles of
16 rows; for each tile and each run of 16 K-positions, two 64-byte vectors (lane r = row
16*tile + r), still 4 bits per code::

    idx[tile, run, 0, r]   nibble j = lo(2p) + 4 lo(2p+1),  p = 8*run + j
    idx[tile, run, 1, r]   nibble j = hi(2p) + 4 hi(2p+1),  p = 8*run + j

Per run and tile: 16 lookups (``vpermps``) and adds for 16 x 16 codes, into 4 chains per plane.
Exposing nibble j of an index word takes one op per lookup; ``vpermps`` and vector shifts share
the shuffle pipes, so with AVX512-IFMA the shifts run on the multiply pipes instead
(``_numba_lut_common._shr``): 0.32 -> 0.27 ms hot at 4096 x 4096 on one Zen 5 core. The tables,
lookups and driver (K-blocks kept in L1 across the tiles of a task, two tiles per table load,
prefetching, group folding, task claiming) are shared with the 2- and 3-bit kernels
(:mod:`mpsearch.kernels._numba_lut_common`, `_numba_lut_driver`). Deterministic for any thread
count and task size. Needs AVX-512F (IFMA optional), K and G (if given) multiples of 16.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 16), 15, np.uint8)
>>> w = prepare_lut4(pack(codes, 4), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=16, G=None)
>>> gemv_lut4(w, np.ones(16, np.float32)) if is_supported(16, None) else np.full(3, 112.0)
array([112., 112., 112.], dtype=float32)
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

RUN = 16  # K-positions per run: one word per plane
BLOCK_RUNS = 16  # runs per K-block: 8 KiB of tables, reused from L1 by a task


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 16."""
    return supported(K, G, RUN)


def _plane_words(packed: np.ndarray) -> np.ndarray:
    """(rows, K/2) packed 4-bit bytes -> (rows, K/16, 2) uint32: the lo and the hi plane words.

    Byte i of a row holds codes 2i (low nibble) and 2i+1; a plane byte holds the plane's 2 bits
    of codes 4i..4i+3, so one plane byte comes from two code bytes.
    """
    b = packed.astype(np.uint16)
    lo = (b & 3) | ((b >> 2) & 0xC)  # per code byte: lo(2i) + 4 lo(2i+1), a nibble
    hi = ((b >> 2) & 3) | ((b >> 4) & 0xC)
    planes = []
    for nib in (lo, hi):
        pb = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)  # (rows, K/4) 2-bit bytes
        planes.append(np.ascontiguousarray(pb).view("<u4"))  # (rows, K/16)
    return np.stack(planes, axis=2)


def prepare_lut4(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int,
                 G: int | None, block_runs: int = BLOCK_RUNS,
                 tiles_per_task: int = 16) -> LutWeights:
    """Rearrange a packed 4-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel,
    once, offline (arguments: :func:`~mpsearch.kernels._numba_lut_common.prepare`)."""
    return prepare(packed, scale, zero, K, G, 4, RUN, _plane_words, block_runs, tiles_per_task)


driver = make_gemv(4)  # the jitted kernel; see bind for calling it without checks


def gemv_lut4(prepared: LutWeights, x: np.ndarray, workers: int = 1,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut4` and x (K,) float32
    (knobs: :func:`~mpsearch.kernels._numba_lut_common.run`)."""
    return run(driver, prepared, x, workers, ahead)
