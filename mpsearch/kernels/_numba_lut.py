"""Batch-1 kernels for AVX-512 at 2, 3 and 4 bits: rows in the 16 lanes, products looked up.

The general kernel (:mod:`mpsearch.kernels._numba_kernels`) puts 16 K-positions of one row in
the 16 lanes and pays a mask, an int-to-float convert and an FMA per 16 codes. Here the lanes
hold 16 *rows*, and a few codes at a time become one 4-bit table index (after T-MAC and
LUT-GEMM). Per call, 16-entry float32 tables are built from x (K/2 pair tables, 128 KiB at
K=4096; for 3 bits also K/4 quad tables, the factor 4 folded in, exact in float)::

    pair  T2[p][c0 + 4*c1]               = c0 * x[2p] + c1 * x[2p+1]           c0, c1 in 0..3
    quad  T1[q][b0 + 2*b1 + 4*b2 + 8*b3] = 4 * (b0 x[4q] + b1 x[4q+1] + b2 x[4q+2] + b3 x[4q+3])

A width is a split of its codes into 2- and 1-bit planes, ``c = lo + 4 * hi``, since
``sum_k c_k x_k = sum_k lo_k x_k + 4 * sum_k hi_k x_k``; one row of :data:`WIDTHS` per width:

* 2 bits: one 2-bit plane. A run is 16 positions, one uint32 per row whose nibble j is
  ``code(2p) + 4 code(2p+1)``, ``p = 8 run + j``: exactly the packed row read as little-endian
  uint32 words, so preparing is a pad and a transpose.
* 3 bits: a 2-bit lo plane (pair tables) and a 1-bit hi plane (quad tables, one lookup per 4
  positions). A run is 32 positions, three words: the lo nibbles of positions 0..15 and 16..31,
  and the hi nibbles ``hi(4q) + 2 hi(4q+1) + 4 hi(4q+2) + 8 hi(4q+3)``, ``q = 8 run + j``.
* 4 bits: two 2-bit planes, both on the pair tables (each table serves four lookups: two planes,
  two tiles), in separate accumulators; a K-block's part of a group is ``s_lo + 4 * s_hi``.
  With AVX512-IFMA the nibble shifts run on the multiply pipes (``_numba_lut_common._shr``):
  0.32 -> 0.27 ms hot at 4096 x 4096 on one Zen 5 core.

Hot loop, per index word (64 bytes, lane r = row 16 tile + r): for j in 0..7 the lanes of
``vpermps(T[...j], word >> 4j)`` are the 16 rows' values of nibble j (``vpermps`` reads only
the low 4 bits of each lane, so no mask), into 4 independent accumulators per tile. Per group of
G codes the group sum is folded into the row totals with the tile's transposed scales, and
``scale * zero * sum(x over the group)`` is subtracted, as the general kernel does.

Every tile reads all the tables (128 KiB, 8x the bytes of its codes at 2 bits), so a task of
several tiles walks K in blocks of ``block_runs`` runs (8 KiB of tables, kept in L1 for all its
tiles), two tiles sharing each table load, and prefetches 8 KiB ahead. The prepared weight
(:class:`LutWeights`) is stored in exactly that read order, one stream per task, and so are its
scales and zero-points. Read as before, tile by tile at a 16 KiB stride, the kernel was 15-30 %
slower from DRAM (interleaved A/B, 2 threads, 4096 x 4096 and 11008 x 4096, 2 and 4 bits); with
the scales group-major (1 KiB pieces 8 KiB apart), 5-9 % slower.

The jitted pieces are in :mod:`mpsearch.kernels._numba_lut_common` (tables, lookups, the fold)
and :mod:`mpsearch.kernels._numba_lut_driver` (the parallel driver, one per width, each under a
name of its own). Deterministic: each row is summed in a fixed order by one thread, for any
thread count or task size (``block_runs`` changes the order only where a group spans blocks).
One Numba dispatch per call. Needs AVX-512F: check :func:`is_supported`, else use
:func:`mpsearch.kernels.numba_cpu.gemv`.

>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 32), 7, np.uint8)
>>> w = prepare_lut(pack(codes, 3), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                 bits=3, K=32, G=None)
>>> gemv_lut(w, np.ones(32, np.float32)) if is_supported(3, 32, None) else np.full(3, 96.0)
array([96., 96., 96.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mpsearch.core.errors import DataError
from mpsearch.kernels._numba_lut_driver import make_gemv
from mpsearch.kernels._numba_lut_layout import AHEAD, LutWeights, bind, layout, supported
from mpsearch.kernels.packing import pack, unpack


def _words2(packed: np.ndarray) -> np.ndarray:
    """(rows, K/4) packed 2-bit bytes -> (rows, K/16, 1) uint32: the row's own words."""
    return packed.view("<u4")[:, :, None]


def _words3(packed: np.ndarray) -> np.ndarray:
    """(rows, 3K/8) packed 3-bit bytes -> (rows, K/32, 3) uint32: two lo words, one hi word."""
    rows, K = packed.shape[0], packed.shape[1] * 8 // 3
    codes = unpack(packed, 3, K)
    lo = pack(codes & 3, 2).view("<u4").reshape(rows, K // 32, 2)  # nibble = pair of positions
    hi = pack(codes >> 2, 1).view("<u4").reshape(rows, K // 32, 1)  # nibble = quad of positions
    return np.concatenate([lo, hi], axis=2)


def _words4(packed: np.ndarray) -> np.ndarray:
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


class LutWidth(NamedTuple):
    """How one width runs on the LUT kernels."""

    run: int  # K-positions per run of index words; K and G must be multiples of it
    words: int  # index words (uint32 per row) per run
    block_runs: int  # default runs per K-block: 8 KiB of pair tables, reused from L1 by a task
    split: Callable[[np.ndarray], np.ndarray]  # packed rows -> (rows, runs, words) uint32


# 2 bits: 32 runs per block was best at 1 thread, 16 with 2 threads from DRAM (-14 % at
# 4096 x 4096 and 11008 x 4096). 3 bits: 8 runs of 32 positions, 8 + 4 KiB of tables.
WIDTHS = {2: LutWidth(16, 1, 16, _words2), 3: LutWidth(32, 3, 8, _words3),
          4: LutWidth(16, 2, 16, _words4)}
# The jitted drivers (compiled on first call); see bind for calling one without checks.
DRIVERS = {bits: make_gemv(bits, w.run, w.words) for bits, w in WIDTHS.items()}


def is_supported(bits: int, K: int, G: int | None) -> bool:
    """Whether the ``bits``-bit kernel can run: a width of :data:`WIDTHS`, an AVX-512F host, K
    and G (if given) multiples of the width's run (16 positions, 32 at 3 bits)."""
    return bits in WIDTHS and supported(K, G, WIDTHS[bits].run)


def prepare_lut(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, K: int,
                G: int | None, block_runs: int | None = None,
                tiles_per_task: int = 16) -> LutWeights:
    """Rearrange a packed ``bits``-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the
    kernel, once, offline (arguments: :func:`~mpsearch.kernels._numba_lut_layout.layout`;
    ``block_runs`` None takes the width's default)."""
    if bits not in WIDTHS:
        raise DataError(f"`bits` must be one of {sorted(WIDTHS)} for the LUT kernels, but got "
                        f"bits={bits!r}. Use numba_cpu.gemv for other widths.")
    width = WIDTHS[bits]
    return layout(packed, scale, zero, K, G, bits, width.run, width.split,
                  width.block_runs if block_runs is None else block_runs, tiles_per_task)


def bound(prepared: LutWeights, workers: int, ahead: int = AHEAD
          ) -> Callable[[np.ndarray], np.ndarray]:
    """``f(x) = W x`` on the driver of the weight's width, nothing checked per call (see
    :func:`~mpsearch.kernels._numba_lut_layout.bind`)."""
    return bind(DRIVERS[prepared.bits], prepared, workers, ahead)


def gemv_lut(prepared: LutWeights, x: np.ndarray, workers: int = 1,
             ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut` and x (K,) float32.

    ``workers`` parallel loops (more than Numba's thread count do not help) claim the prepared
    tasks in turn; ``ahead`` (prefetch distance in uint32 along the task's codes, 0 for none)
    is a tuning knob.
    """
    xa = np.ascontiguousarray(x, np.float32)
    if xa.shape != (prepared.K,):
        raise DataError(f"`x` must have shape ({prepared.K},) for this weight, but got "
                        f"{xa.shape}. Pass one activation vector of length K.")
    if workers < 1 or ahead < 0:
        raise DataError(f"`workers` must be >= 1 and `ahead` >= 0, but got {workers}, {ahead}. "
                        f"Keep the defaults unless tuning.")
    return bound(prepared, workers, ahead)(xa)
