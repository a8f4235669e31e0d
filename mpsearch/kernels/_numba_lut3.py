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

Per run and tile: 24 shift + permute + add steps for 16 x 32 codes, into 8 chains. Blocking of
K (tables kept in L1 across the tiles of a task), two tiles per table load, prefetching, the
group folding with scale and ``scale * zero * sum(x)`` and the task claiming are those of the
2-bit kernel. Deterministic for any thread count and task size. Needs AVX-512F, K a multiple of
32 and G (if given) a multiple of 32: the hi plane's words cover 32 positions; no tail is
handled. Numba keys its on-disk cache on this file only; after editing ``_numba_lut.py`` or
``_numba_simd.py``, touch this file.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 32), 7, np.uint8)
>>> w = prepare_lut3(pack(codes, 3), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=32, G=None)
>>> gemv_lut3(w, np.ones(32, np.float32)) if is_supported(32, None) else np.full(3, 96.0)
array([96., 96., 96.], dtype=float32)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from mpsearch.errors import DataError
from mpsearch.kernels._numba_lut import (
    _C0,
    _C1,
    _OPTS,
    TILE,
    _fold,
    _has_avx512f,
    _lookup,
    _prepare_x,
    _vload_idx,
)
from mpsearch.kernels._numba_simd import (
    fetch_add,
    prefetch,
    vadd,
    vload,
    vmul,
    vsplat,
    vstore,
    vzero,
)
from mpsearch.kernels.packing import pack, unpack

RUN = 32  # K-positions per run: one hi-plane word
BLOCK_RUNS = 8  # runs per K-block: 8 + 4 KiB of tables, reused from L1 by a task
AHEAD = BLOCK_RUNS * 48  # prefetch distance in uint32: the same tile's next K-block
# Entry e of a quad table holds 4 * sum_i bit_i(e) * x[4q + i]: the four bit patterns, times 4.
_B4 = np.array([4.0 * ((e >> i) & 1) for i in range(4) for e in range(16)], np.float32)


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 32."""
    if K < RUN or K % RUN or (G is not None and (G < RUN or G % RUN)):
        return False
    return _has_avx512f()


class Lut3Weights(NamedTuple):
    """A 3-bit weight rearranged for :func:`gemv_lut3` (see the module docstring)."""

    idx: np.ndarray  # (ntiles, K // 32, 3, 16) uint32: lo nibbles (2 words), hi nibbles (1 word)
    scale: np.ndarray  # (ntiles, n_groups, 16) float32, transposed per tile (padding rows 0)
    szero: np.ndarray  # (ntiles, n_groups, 16) float32: scale * zero in float32
    out: int
    K: int
    G: int  # G, or K when there is one group per row


def prepare_lut3(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int,
                 G: int | None) -> Lut3Weights:
    """Rearrange a packed 3-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel.

    ``scale`` (out, n_groups) float16 or float32, ``zero`` (out, n_groups) uint8. Done once,
    offline; rows are padded to a multiple of 16 with code 0 and scale 0.
    """
    if not is_supported(K, G):
        raise DataError(f"The 3-bit LUT kernel needs an AVX-512F CPU, K and G multiples of 32, "
                         f"but got K={K}, G={G}. Check is_supported(K, G) and use "
                         f"numba_cpu.gemv.")
    out = packed.shape[0]
    ng = 1 if G is None else -(-K // G)
    if packed.shape != (out, 3 * K // 8) or scale.shape != (out, ng) or zero.shape != (out, ng):
        raise DataError(f"A 3-bit weight with K={K}, G={G} needs packed (out, {3 * K // 8}), "
                         f"scale and zero (out, {ng}), but got {packed.shape}, {scale.shape}, "
                         f"{zero.shape}. Pack the codes with pack(codes, 3).")
    ntiles = -(-out // TILE)
    pad = ntiles * TILE - out
    codes = np.pad(unpack(np.ascontiguousarray(packed, np.uint8), 3, K), ((0, pad), (0, 0)))
    rows, nrun = ntiles * TILE, K // RUN
    lo = pack(codes & 3, 2).view("<u4").reshape(rows, nrun, 2)  # nibble = pair of positions
    hi = pack(codes >> 2, 1).view("<u4").reshape(rows, nrun, 1)  # nibble = quad of positions
    words = np.concatenate([lo, hi], axis=2).reshape(ntiles, TILE, nrun, 3).transpose(0, 2, 3, 1)
    s32 = np.pad(np.asarray(scale, np.float32), ((0, pad), (0, 0)))
    sz = s32 * np.pad(np.asarray(zero, np.uint8), ((0, pad), (0, 0))).astype(np.float32)

    def per_tile(a: np.ndarray) -> np.ndarray:  # (rows, n) -> (ntiles, n, 16)
        return np.ascontiguousarray(a.reshape(ntiles, TILE, a.shape[1]).transpose(0, 2, 1))

    return Lut3Weights(np.ascontiguousarray(words), per_tile(s32), per_tile(sz), out, K,
                       K if ng == 1 else G)


@njit(**_OPTS)
def _quad_tables(x, b4):
    """The K/4 quad tables, flat: ``tab[16q + e] = 4 * sum_i bit_i(e) * x[4q + i]``."""
    tab = np.empty(x.shape[0] * 4, np.float32)
    b0, b1, b2, b3 = vload(b4, 0), vload(b4, 16), vload(b4, 32), vload(b4, 48)
    for q in range(x.shape[0] // 4):
        k = 4 * q
        vstore(tab, 16 * q, vadd(vadd(vmul(b0, vsplat(x[k])), vmul(b1, vsplat(x[k + 1]))),
                                 vadd(vmul(b2, vsplat(x[k + 2])), vmul(b3, vsplat(x[k + 3])))))
    return tab


@njit(inline="always", **_OPTS)
def _runs3(flat, t2, t1, base, base2, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (at flat offsets ``base``, ``base2``), 8 chains each.

    Chain j adds, per run, the lookups of nibble j of the two lo words and of the hi word.
    """
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzero()
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = vzero()
    for q in range(q0, q1):
        o, o2 = base + q * 48, base2 + q * 48
        if ahead:
            prefetch(flat, o + ahead)
            prefetch(flat, o + ahead + 16)
            prefetch(flat, o + ahead + 32)
            prefetch(flat, o2 + ahead)
            prefetch(flat, o2 + ahead + 16)
            prefetch(flat, o2 + ahead + 32)
        for half in range(2):  # the two lo words: pair tables 16q + 8 half + j
            v, w = _vload_idx(flat, o + 16 * half), _vload_idx(flat, o2 + 16 * half)
            to = q * 256 + 128 * half
            a0, b0 = vadd(a0, _lookup(t2, to, v, 0)), vadd(b0, _lookup(t2, to, w, 0))
            a1, b1 = vadd(a1, _lookup(t2, to + 16, v, 1)), vadd(b1, _lookup(t2, to + 16, w, 1))
            a2, b2 = vadd(a2, _lookup(t2, to + 32, v, 2)), vadd(b2, _lookup(t2, to + 32, w, 2))
            a3, b3 = vadd(a3, _lookup(t2, to + 48, v, 3)), vadd(b3, _lookup(t2, to + 48, w, 3))
            a4, b4 = vadd(a4, _lookup(t2, to + 64, v, 4)), vadd(b4, _lookup(t2, to + 64, w, 4))
            a5, b5 = vadd(a5, _lookup(t2, to + 80, v, 5)), vadd(b5, _lookup(t2, to + 80, w, 5))
            a6, b6 = vadd(a6, _lookup(t2, to + 96, v, 6)), vadd(b6, _lookup(t2, to + 96, w, 6))
            a7, b7 = vadd(a7, _lookup(t2, to + 112, v, 7)), vadd(b7, _lookup(t2, to + 112, w, 7))
        v, w, to = _vload_idx(flat, o + 32), _vload_idx(flat, o2 + 32), q * 128
        a0, b0 = vadd(a0, _lookup(t1, to, v, 0)), vadd(b0, _lookup(t1, to, w, 0))
        a1, b1 = vadd(a1, _lookup(t1, to + 16, v, 1)), vadd(b1, _lookup(t1, to + 16, w, 1))
        a2, b2 = vadd(a2, _lookup(t1, to + 32, v, 2)), vadd(b2, _lookup(t1, to + 32, w, 2))
        a3, b3 = vadd(a3, _lookup(t1, to + 48, v, 3)), vadd(b3, _lookup(t1, to + 48, w, 3))
        a4, b4 = vadd(a4, _lookup(t1, to + 64, v, 4)), vadd(b4, _lookup(t1, to + 64, w, 4))
        a5, b5 = vadd(a5, _lookup(t1, to + 80, v, 5)), vadd(b5, _lookup(t1, to + 80, w, 5))
        a6, b6 = vadd(a6, _lookup(t1, to + 96, v, 6)), vadd(b6, _lookup(t1, to + 96, w, 6))
        a7, b7 = vadd(a7, _lookup(t1, to + 112, v, 7)), vadd(b7, _lookup(t1, to + 112, w, 7))
    return (vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7))),
            vadd(vadd(vadd(b0, b1), vadd(b2, b3)), vadd(vadd(b4, b5), vadd(b6, b7))))


@njit(parallel=True, **_OPTS)
def _gemv(idx, scale, szero, x, G, out, c0, c1, b4, workers, tiles_per_task, block_runs, ahead):
    ntiles, nrun = idx.shape[0], idx.shape[1]
    ng = scale.shape[1]
    rpg = G // 32  # runs per group
    sahead = max(1, block_runs // rpg) * 16 if ahead else 0  # scales of the next K-block
    t2, nxs = _prepare_x(x, G, ng, c0, c1)
    t1 = _quad_tables(x, b4)
    flat, sf, szf = idx.reshape(idx.size), scale.reshape(scale.size), szero.reshape(szero.size)
    y = np.empty(ntiles * 16, np.float32)
    ntasks = (ntiles + tiles_per_task - 1) // tiles_per_task
    claimed = np.empty(1, np.int64)  # not np.zeros: that would be a parallel loop
    claimed[0] = 0
    for _ in prange(workers):  # one per thread; tasks are claimed, not preassigned
        acc = np.empty(tiles_per_task * 48, np.float32)  # see _numba_lut._fold
        while True:
            task = fetch_add(claimed, 0, 1)
            if task >= ntasks:
                break
            t0 = task * tiles_per_task
            nt = min(ntiles, t0 + tiles_per_task) - t0
            for i in range(2 * nt):
                vstore(acc, i * 16, vzero())
            # K in blocks of block_runs runs: their tables stay in L1 for all nt tiles.
            for kb0 in range(0, nrun, block_runs):
                kb1 = min(nrun, kb0 + block_runs)
                for i in range(0, nt, 2):
                    k = min(i + 1, nt - 1)  # tile i's partner (itself if it is the odd last)
                    base, base2 = (t0 + i) * nrun * 48, (t0 + k) * nrun * 48
                    q = kb0
                    while q < kb1:
                        g = q // rpg
                        gend = min(nrun, (g + 1) * rpg)
                        qe = min(kb1, gend)
                        s, s2 = _runs3(flat, t2, t1, base, base2, q, qe, ahead)
                        _fold(acc, i, nt, s, q != g * rpg, qe == gend, sf, szf,
                              ((t0 + i) * ng + g) * 16, nxs[g], sahead)
                        if k != i:
                            _fold(acc, k, nt, s2, q != g * rpg, qe == gend, sf, szf,
                                  ((t0 + k) * ng + g) * 16, nxs[g], sahead)
                        q = qe
            for i in range(nt):
                vstore(y, (t0 + i) * 16, vadd(vload(acc, i * 16), vload(acc, (nt + i) * 16)))
    return y[:out]


def gemv_lut3(prepared: Lut3Weights, x: np.ndarray, workers: int = 1,
              tiles_per_task: int = 16, block_runs: int = BLOCK_RUNS,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut3` and x (K,) float32.

    ``workers`` parallel loops (more than Numba's thread count do not help) claim tasks of
    ``tiles_per_task`` tiles of 16 rows in turn; ``block_runs`` (runs of 32 positions per
    K-block) and ``ahead`` (prefetch distance in uint32, 0 for none) are tuning knobs.
    """
    xa = np.ascontiguousarray(x, np.float32)
    if xa.shape != (prepared.K,):
        raise DataError(f"`x` must have shape ({prepared.K},) for this weight, but got "
                         f"{xa.shape}. Pass one activation vector of length K.")
    if min(workers, tiles_per_task, block_runs) < 1 or ahead < 0:
        raise DataError(f"`workers`, `tiles_per_task` and `block_runs` must be >= 1 and `ahead` "
                         f">= 0, but got {workers}, {tiles_per_task}, {block_runs}, {ahead}. "
                         f"Keep the defaults unless tuning.")
    return _gemv(prepared.idx, prepared.scale, prepared.szero, xa, prepared.G, prepared.out,
                 _C0, _C1, _B4, workers, tiles_per_task, block_runs, ahead)
