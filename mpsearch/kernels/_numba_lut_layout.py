"""The memory order of a weight prepared for the LUT kernels, and calling a driver on it.

Numpy only, done once per weight (:func:`layout`); the kernels are described in
:mod:`mpsearch.kernels._numba_lut`, which holds the per-width table that drives this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mpsearch.core.errors import DataError
from mpsearch.kernels._numba_lut_common import TILE
from mpsearch.kernels._numba_simd import target_has
from mpsearch.kernels._operands import kernel_scales

# Codes are prefetched this many uint32 (8 KiB) ahead in a task's stream: from DRAM at 2 and 4
# bits, 2 threads, 4-10 % faster than one K-block ahead, and 2 KiB was slower.
AHEAD = 2048


def supported(K: int, G: int | None, multiple: int) -> bool:
    """An AVX-512F target (``vpermps`` on 16 lanes), and K and G (if given) multiples of
    ``multiple`` (16 or 32)."""
    if K < multiple or K % multiple or (G is not None and (G < multiple or G % multiple)):
        return False
    return target_has("avx512f")


class LutWeights(NamedTuple):
    """A weight rearranged for one of the LUT kernels (see :mod:`mpsearch.kernels._numba_lut`).

    Stored in the order the kernel reads it, so that each task reads one stream: in tasks of
    ``tiles_per_task`` tiles (the unit of parallel work), each one contiguous; within a task K
    in blocks of ``block_runs`` runs (the unit of table reuse); within a block the tiles in
    pairs (summed together, sharing each table load), the two tiles of a pair alternating run
    by run (an odd last tile alone)::

        idx = [task 0: [block 0: t0 r0 | t1 r0 | t0 r1 | t1 r1 | ... | t2 r0 | t3 r0 | ...]
                       [block 1: ...] ...] [task 1: ...] ...

    The scales and zero-points go task by task too, each task's group by group, the task's
    tiles of a group side by side: ``[task 0: [g0: t0 | t1 | ...] [g1: ...] ...] [task 1: ...]``,
    so that they too are one stream per task.
    """

    idx: np.ndarray  # flat uint32 in read order (above), 16 lanes per word: lane r = row 16 t + r
    scale: np.ndarray  # flat (task, group, tile, 16): fp16 bits (uint16) or float32 (padding: 0)
    zero: np.ndarray  # flat (task, group, tile, 16) uint8
    bits: int  # the width, which picks the driver
    out: int
    K: int
    G: int  # G, or K when there is one group per row
    block_runs: int  # runs per K-block of idx
    tiles_per_task: int  # tiles per task of idx


def layout(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int, G: int | None,
           bits: int, multiple: int, words: Callable[[np.ndarray], np.ndarray],
           block_runs: int, tiles_per_task: int) -> LutWeights:
    """Check a packed ``bits``-bit weight, pad its rows to whole tiles and lay it out in the
    order the kernel reads it (:class:`LutWeights`).

    ``scale`` (out, n_groups) float16 or float32, ``zero`` (out, n_groups) uint8. The layout
    fixes ``tiles_per_task`` (tiles of 16 rows per task, the unit of parallel work) and
    ``block_runs`` (runs of ``multiple`` positions per K-block, the unit of table reuse).
    ``words(packed_rows)`` turns (rows, K * bits / 8) packed bytes into (rows, runs, n) uint32
    index words. Scales stay in their dtype (float16, read as uint16 bits, or float32), so the
    kernel reads the bytes the packed weight stores. Done once, offline; padding rows have code
    0 and scale 0.
    """
    if not supported(K, G, multiple):
        raise DataError(f"The {bits}-bit LUT kernel needs an AVX-512F CPU, K and G multiples of "
                        f"{multiple}, but got K={K}, G={G}. Check is_supported({bits}, K, G) and "
                        f"use numba_cpu.gemv.")
    for name, v in (("block_runs", block_runs), ("tiles_per_task", tiles_per_task)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise DataError(f"`{name}` must be an integer >= 1, but got {v!r}. Keep the default "
                            f"unless tuning.")
    out = packed.shape[0]
    ng = 1 if G is None else -(-K // G)
    if packed.shape != (out, bits * K // 8) or scale.shape != (out, ng) or zero.shape != (out, ng):
        raise DataError(f"A {bits}-bit weight with K={K}, G={G} needs packed (out, "
                        f"{bits * K // 8}), scale and zero (out, {ng}), but got {packed.shape}, "
                        f"{scale.shape}, {zero.shape}. Pack the codes with pack(codes, {bits}).")
    ntiles = -(-out // TILE)
    pad = ((0, ntiles * TILE - out), (0, 0))
    w = words(np.pad(np.ascontiguousarray(packed, np.uint8), pad))
    w = w.reshape(ntiles, TILE, w.shape[1], w.shape[2]).transpose(0, 2, 3, 1)
    nrun, T = w.shape[1], tiles_per_task
    idx = np.concatenate([_pairs_by_run(w[t:t + T, b:b + block_runs])
                          for t in range(0, ntiles, T) for b in range(0, nrun, block_runs)]
                         or [np.empty(0, np.uint32)])

    def per_task(a: np.ndarray) -> np.ndarray:  # (rows, ng) -> flat (task, ng, tile, 16)
        a = np.pad(a, pad).T.reshape(ng, ntiles, TILE)
        return np.concatenate([a[:, t:t + T].reshape(-1) for t in range(0, ntiles, T)]
                              or [a.reshape(-1)])  # no rows: empty

    return LutWeights(idx, per_task(kernel_scales(np.asarray(scale))),
                      per_task(np.asarray(zero, np.uint8)), bits, out, K, K if ng == 1 else G,
                      block_runs, tiles_per_task)


def _pairs_by_run(block: np.ndarray) -> np.ndarray:
    """One task's K-block (tiles, runs, words, 16), flat in read order: tiles in pairs, the two
    tiles of a pair alternating run by run (an odd last tile alone)."""
    n, even = block.shape[0], block.shape[0] // 2 * 2
    pairs = block[:even].reshape(n // 2, 2, *block.shape[1:]).transpose(0, 2, 1, 3, 4)
    return np.concatenate([pairs.reshape(-1), block[even:].reshape(-1)])


def bind(gemv: Callable, prepared: LutWeights, workers: int, ahead: int
         ) -> Callable[[np.ndarray], np.ndarray]:
    """``f(x) = W x`` with the driver, the weight and knobs bound: the driver and nothing else,
    for a caller that has checked x itself (a C-contiguous float32 array of shape (K,)). A call
    after other work finds Python's own objects out of cache, so every layer in front of the
    kernel costs (``GemvWeight`` through the checked call took 6-13 us more per call, 2-bit
    4096 x 4096 from DRAM).
    """
    head = (prepared.idx, prepared.scale, prepared.zero)
    tail = (prepared.K, prepared.G, prepared.out, prepared.block_runs, prepared.tiles_per_task,
            workers, ahead)
    return lambda x: gemv(*head, x, *tail)
