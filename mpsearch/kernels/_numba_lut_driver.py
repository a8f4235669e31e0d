"""The parallel driver of the AVX-512 table-lookup GEMV kernels, and each width's inner loop.

``_runs2``, ``_runs3`` and ``_runs4`` sum the lookups of a run of index words for two tiles of
16 rows (each width's index words are drawn in :mod:`mpsearch.kernels._numba_lut`, whose width
table calls :func:`make_gemv`); :func:`make_gemv` wraps one of them in the shared driver: tasks
of tiles claimed from a shared counter, K in blocks whose tables stay in L1 while every tile of
the task uses them, two tiles per table load, prefetching, and the per-group fold. Numba keys its disk
cache on this file only: after editing ``_numba_lut_common.py`` or ``_numba_simd.py``, touch
this file.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from mpsearch.kernels._numba_lut_common import (
    chains_sum,
    fold,
    load_words,
    neg_group_sums,
    pair_tables,
    quad_tables,
    wait_until,
    word,
)
from mpsearch.kernels._numba_simd import (
    OPTS,
    fetch_add,
    njit_as,
    prefetch,
    vadd,
    vload,
    vmuladd,
    vsplat,
    vstore,
    vzero,
)

TABLE_PART = 512  # K-positions per part of the tables, built by whichever worker claims it


@njit(inline="always", **OPTS)
def _runs2(flat, pairs, base, base2, step, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (run q at flat offsets ``base + q step``,
    ``base2 + q step``), 4 chains each."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = vzero()
    for q in range(q0, q1):
        if ahead:
            prefetch(flat, base + q * step + ahead)
            prefetch(flat, base2 + q * step + ahead)
        to = q * 128
        a0, a1, a2, a3 = word(pairs, to, load_words(flat, base + q * step), a0, a1, a2, a3)
        b0, b1, b2, b3 = word(pairs, to, load_words(flat, base2 + q * step), b0, b1, b2, b3)
    return chains_sum(a0, a1, a2, a3), chains_sum(b0, b1, b2, b3)


@njit(inline="always", **OPTS)
def _runs3(flat, pairs, quads, base, base2, step, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (run q at flat offsets ``base + q step``,
    ``base2 + q step``), 4 chains each: per run the two lo words (pair tables 16q..16q+15) and
    the hi word (quad tables 8q..8q+7)."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = vzero()
    for q in range(q0, q1):
        o, o2 = base + q * step, base2 + q * step
        if ahead:
            for w in range(0, 48, 16):
                prefetch(flat, o + ahead + w)
                prefetch(flat, o2 + ahead + w)
        for half in range(2):
            to = q * 256 + 128 * half
            a0, a1, a2, a3 = word(pairs, to, load_words(flat, o + 16 * half), a0, a1, a2, a3)
            b0, b1, b2, b3 = word(pairs, to, load_words(flat, o2 + 16 * half), b0, b1, b2, b3)
        a0, a1, a2, a3 = word(quads, q * 128, load_words(flat, o + 32), a0, a1, a2, a3)
        b0, b1, b2, b3 = word(quads, q * 128, load_words(flat, o2 + 32), b0, b1, b2, b3)
    return chains_sum(a0, a1, a2, a3), chains_sum(b0, b1, b2, b3)


@njit(inline="always", **OPTS)
def _runs4(flat, pairs, base, base2, step, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (run q at flat offsets ``base + q step``,
    ``base2 + q step``): per tile the lo plane's 4 chains plus 4 times the hi plane's (both
    index the same pair tables)."""
    a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = vzero()  # tile 1: lo, hi
    b0 = b1 = b2 = b3 = d0 = d1 = d2 = d3 = vzero()  # tile 2: lo, hi
    for q in range(q0, q1):
        o, o2 = base + q * step, base2 + q * step
        if ahead:
            prefetch(flat, o + ahead)
            prefetch(flat, o + ahead + 16)
            prefetch(flat, o2 + ahead)
            prefetch(flat, o2 + ahead + 16)
        to = q * 128
        a0, a1, a2, a3 = word(pairs, to, load_words(flat, o), a0, a1, a2, a3)
        c0, c1, c2, c3 = word(pairs, to, load_words(flat, o + 16), c0, c1, c2, c3)
        b0, b1, b2, b3 = word(pairs, to, load_words(flat, o2), b0, b1, b2, b3)
        d0, d1, d2, d3 = word(pairs, to, load_words(flat, o2 + 16), d0, d1, d2, d3)
    four = vsplat(np.float32(4.0))  # exact: a power of two
    return (vmuladd(four, chains_sum(c0, c1, c2, c3), chains_sum(a0, a1, a2, a3)),
            vmuladd(four, chains_sum(d0, d1, d2, d3), chains_sum(b0, b1, b2, b3)))


def make_gemv(bits: int, run: int, words: int) -> Callable:
    """The parallel batch-1 driver of the ``bits``-bit LUT kernel (2, 3 or 4), whose index
    words come ``words`` per ``run`` K-positions (``_numba_lut.WIDTHS``).

    ``gemv(idx, scale, zero, x, K, G, out, block_runs, tiles_per_task, workers, ahead) -> y``;
    each row is summed in a fixed order by one thread, for any thread count or task size
    (``block_runs`` changes the order only where a group spans K-blocks). The width only picks
    the inner loop (``_runs<bits>``), a compile-time branch: the closure holds nothing but
    ints, so Numba's disk cache finds it again (a closure over a function would be compiled
    anew in every process).
    """
    if bits not in (2, 3, 4):  # the widths with an inner loop here
        raise ValueError(f"`bits` must be 2, 3 or 4 for a LUT kernel, but got bits={bits!r}.")
    B, P, QUADS = bits, run, bits == 3
    W16 = words * 16  # uint32 per run of a tile

    @njit_as(f"gemv{bits}", parallel=True, **OPTS)
    def gemv(idx, scale, zero, x, K, G, out, block_runs, tiles_per_task, workers, ahead):
        ng, ntiles = (K + G - 1) // G, (out + 15) // 16
        nrun = K // P
        rpg = G // P  # runs per group
        # Codes are prefetched ``ahead`` uint32 on in the task's stream; scales, when ahead > 0,
        # those of the same tile's next K-block (groups_ahead groups on).
        groups_ahead = min(ahead, 1) * max(1, block_runs // rpg)
        pairs = np.empty(K * 8, np.float32)
        tquad = np.empty(K * 4, np.float32) if QUADS else pairs
        nxs = neg_group_sums(x, G, ng)
        y = np.empty(ntiles * 16, np.float32)
        ntasks = (ntiles + tiles_per_task - 1) // tiles_per_task
        nparts = (K + TABLE_PART - 1) // TABLE_PART
        # Counters of tasks claimed, table parts claimed and table parts built. Not np.zeros
        # or claimed[:] = 0: each would be a parallel loop.
        claimed = np.empty(3, np.int64)
        claimed[0] = claimed[1] = claimed[2] = 0
        for _ in prange(workers):  # one per thread; tasks are claimed, not preassigned
            acc = np.empty(tiles_per_task * 48, np.float32)  # see fold
            # Build parts of the tables, then wait until every part is built (by whichever
            # worker claimed it: all of them are running, none waits before its parts are done).
            while True:
                part = fetch_add(claimed, 1, 1)
                if part >= nparts:
                    break
                k0, k1 = part * TABLE_PART, min(K, (part + 1) * TABLE_PART)
                pair_tables(x, pairs, k0, k1)
                if QUADS:
                    quad_tables(x, tquad, k0, k1)
                fetch_add(claimed, 2, 1)
            wait_until(claimed, 2, nparts)
            task = fetch_add(claimed, 0, 1)
            while task < ntasks:
                t0 = task * tiles_per_task
                nt = min(ntiles, t0 + tiles_per_task) - t0
                sahead = groups_ahead * nt * 16  # the task's scales: (group, tile, 16)
                for i in range(2 * nt):
                    vstore(acc, i * 16, vzero())
                # K in blocks of block_runs runs: their tables stay in L1 for all nt tiles.
                for kb0 in range(0, nrun, block_runs):
                    kb1 = min(nrun, kb0 + block_runs)
                    for i in range(0, nt, 2):
                        k = min(i + 1, nt - 1)  # tile i's partner (itself if it is the odd last)
                        # Tiles i and k alternate run by run from the task's offset t0 nrun W16
                        # + its block's kb0 nt W16 + (i (kb1 - kb0) + 2 (q - kb0)) W16.
                        step = W16 * (1 + k - i)
                        b1 = (t0 * nrun + kb0 * nt + i * (kb1 - kb0)) * W16 - kb0 * step
                        b2 = b1 + W16 * (k - i)  # a lone tile is its own partner: no reads past it
                        q = kb0
                        while q < kb1:
                            g = q // rpg
                            gend = min(nrun, (g + 1) * rpg)
                            qe = min(kb1, gend)
                            if B == 2:
                                s, s2 = _runs2(idx, pairs, b1, b2, step, q, qe, ahead)
                            elif B == 3:
                                s, s2 = _runs3(idx, pairs, tquad, b1, b2, step, q, qe, ahead)
                            else:
                                s, s2 = _runs4(idx, pairs, b1, b2, step, q, qe, ahead)
                            fold(acc, i, nt, s, q != g * rpg, qe == gend, scale, zero,
                                  (t0 * ng + g * nt + i) * 16, nxs[g], sahead)
                            if k != i:
                                fold(acc, k, nt, s2, q != g * rpg, qe == gend, scale, zero,
                                      (t0 * ng + g * nt + k) * 16, nxs[g], sahead)
                            q = qe
                for i in range(nt):
                    vstore(y, (t0 + i) * 16, vadd(vload(acc, i * 16), vload(acc, (nt + i) * 16)))
                task = fetch_add(claimed, 0, 1)
        return y[:out]

    return gemv
