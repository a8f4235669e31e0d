"""A 2-bit batch-1 kernel for AVX-512: rows in the 16 lanes, products looked up in tables.

The general kernel (:mod:`mpsearch.kernels._numba_kernels`) puts 16 K-positions of one row in
the 16 lanes and pays a mask, an int-to-float convert and an FMA per 16 codes. Here the lanes
hold 16 *rows*, and two codes at a time become one table index (after T-MAC and LUT-GEMM):

* per call, for each pair p of x, a 16-entry float32 table (K/2 tables, 128 KiB at K=4096)::

      T[p][c0 + 4*c1] = c0 * x[2p] + c1 * x[2p+1]          c0, c1 in 0..3

* weights, rearranged once by :func:`prepare_lut2`: tiles of 16 rows; for each tile and each
  run of 16 K-positions (8 pairs), one uint32 per row whose nibble j is the index of pair
  ``p = 8*run + j``. That nibble stream is exactly the packed 2-bit row read as little-endian
  uint32 words, so preparing is a pad and a transpose::

      idx[tile, run, 0, :]   one 64-byte vector, lane r = row 16*tile + r
        lane r:  | n7 | n6 | n5 | n4 | n3 | n2 | n1 | n0 |     n_j = code(2p) + 4*code(2p+1)
                 31                                    0

* hot loop, per run: load the index vector once; for j in 0..7 the lanes of
  ``vpermps(T[8*run + j], idx >> 4j)`` are the 16 rows' values of pair p (vpermps reads only
  the low 4 bits of each lane, so no mask). One shift, one permute and one add per 32 codes,
  into 4 independent accumulators per tile. Per group of G codes (a multiple of 16), the
  group sum is folded into the row totals with the tile's transposed scales (16 per tile and
  group), and ``scale * zero * sum(x over the group)`` is subtracted, as the general kernel
  does.

The tables of all K (128 KiB) do not fit in L1, and every tile reads all of them, 8x the
bytes of its codes. So a task of several tiles walks K in blocks of ``block_runs`` runs
(8 KiB of tables, kept in L1 for all its tiles), two tiles sharing each table load, and
prefetches 8 KiB ahead. The prepared weight is stored in exactly that read order, one stream
per task (:class:`~mpsearch.kernels._numba_lut_common.LutWeights`), and so are its scales and
zero-points. Read as before, tile by tile at a 16 KiB stride, the kernel was 15-30 % slower
from DRAM (interleaved A/B, 2 threads, 4096 x 4096 and 11008 x 4096, 2 and 4 bits); with the
scales group-major (1 KiB pieces 8 KiB apart), 5-9 % slower.

The tables, the lookups, the driver (tasks, K-blocks, group folding) and the layout checks are
shared with the 3- and 4-bit kernels (:mod:`mpsearch.kernels._numba_lut_common`,
`_numba_lut_driver`). Deterministic: each row is summed in a fixed order by one thread, for any
thread count or task size (``block_runs`` changes the order only where a group spans blocks).
One Numba dispatch per call. Needs AVX-512F (``vpermps`` on 16 lanes): check
:func:`is_supported` and fall back otherwise.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 16), 3, np.uint8)
>>> w = prepare_lut2(pack(codes, 2), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=16, G=None)
>>> gemv_lut2(w, np.ones(16, np.float32)) if is_supported(16, None) else np.full(3, 16.0)
array([16., 16., 16.], dtype=float32)
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

RUN = 16  # K-positions per run: one index word
BLOCK_RUNS = 16  # runs per K-block: 8 KiB of tables, reused from L1 by a task (32 is best at
# 1 thread, 16 with 2 threads from DRAM: -14 % at 4096 x 4096 and 11008 x 4096)


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 16."""
    return supported(K, G, RUN)


def _words(packed: np.ndarray) -> np.ndarray:
    """(rows, K/4) packed 2-bit bytes -> (rows, K/16, 1) uint32: the row's own words."""
    return packed.view("<u4")[:, :, None]


def prepare_lut2(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int,
                 G: int | None, block_runs: int = BLOCK_RUNS,
                 tiles_per_task: int = 16) -> LutWeights:
    """Rearrange a packed 2-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel,
    once, offline (arguments: :func:`~mpsearch.kernels._numba_lut_common.prepare`)."""
    return prepare(packed, scale, zero, K, G, 2, RUN, _words, block_runs, tiles_per_task)


driver = make_gemv(2)  # the jitted kernel; see bind for calling it without checks


def gemv_lut2(prepared: LutWeights, x: np.ndarray, workers: int = 1,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut2` and x (K,) float32
    (knobs: :func:`~mpsearch.kernels._numba_lut_common.run`)."""
    return run(driver, prepared, x, workers, ahead)
