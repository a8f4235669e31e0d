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

      idx[tile, run, :]   one 64-byte vector, lane r = row 16*tile + r
        lane r:  | n7 | n6 | n5 | n4 | n3 | n2 | n1 | n0 |     n_j = code(2p) + 4*code(2p+1)
                 31                                    0

* hot loop, per run: load the index vector once; for j in 0..7 the lanes of
  ``vpermps(T[8*run + j], idx >> 4j)`` are the 16 rows' values of pair p (vpermps reads only
  the low 4 bits of each lane, so no mask). One shift, one permute and one add per 32 codes,
  into 8 independent accumulators (one per j). Per group of G codes (a multiple of 16), the
  group sum is folded into the row totals with the tile's transposed scales (ntiles, ng, 16),
  and ``scale * zero * sum(x over the group)`` is subtracted, as the general kernel does.

The tables of all K (128 KiB) do not fit in L1, and every tile reads all of them, 8x the
bytes of its codes. So a task of several tiles walks K in blocks of ``block_runs`` runs
(16 KiB of tables, kept in L1 for all its tiles), two tiles sharing each table load, and
prefetches each tile's next block.

Deterministic: each row is summed in a fixed order by one thread, for any thread count or
task size (``block_runs`` changes the order only where a group spans blocks). One Numba
dispatch per call; workers claim tasks of whole tiles from a shared counter. Needs AVX-512F
(``vpermps`` on 16 lanes): check :func:`is_supported` and fall back otherwise. Numba keys its
on-disk cache on this file only; after editing ``_numba_simd.py``, touch this file.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 16), 3, np.uint8)
>>> w = prepare_lut2(pack(codes, 2), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=16, G=None)
>>> gemv_lut2(w, np.ones(16, np.float32)) if is_supported(16, None) else np.full(3, 16.0)
array([16., 16., 16.], dtype=float32)
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from llvmlite import binding, ir
from numba import njit, prange
from numba.core import cgutils, config
from numba.extending import intrinsic

from mpsearch.errors import DataError
from mpsearch.kernels._numba_simd import (
    _VF,
    _VI,
    _literal,
    _ptr,
    f32x16,
    fetch_add,
    i32x16,
    prefetch,
    vadd,
    vload,
    vmul,
    vmuladd,
    vsplat,
    vstore,
    vzero,
)

TILE = 16  # rows per tile = SIMD lanes
BLOCK_RUNS = 32  # runs (16 K-positions) per K-block: 16 KiB of tables, reused from L1 by a task
AHEAD = BLOCK_RUNS * 16  # prefetch distance in uint32: the same tile's next K-block
_OPTS = {"fastmath": False, "cache": True}
# Index patterns of the 16 table entries: entry e holds c0 * x[2p] + c1 * x[2p+1].
_C0 = np.array([e % 4 for e in range(16)], np.float32)
_C1 = np.array([e // 4 for e in range(16)], np.float32)


@cache
def _has_avx512f() -> bool:
    if config.CPU_NAME not in (None, "host"):  # NUMBA_CPU_NAME set (portable caches)
        return "+avx512f" in (config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("avx512f", False))


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 16."""
    if K < 16 or K % 16 or (G is not None and (G < 16 or G % 16)):
        return False
    return _has_avx512f()


class Lut2Weights(NamedTuple):
    """A 2-bit weight rearranged for :func:`gemv_lut2` (see the module docstring)."""

    idx: np.ndarray  # (ntiles, K // 16, 16) uint32: [t, q, r] nibble j = pair 8q + j of row 16t + r
    scale: np.ndarray  # (ntiles, n_groups, 16) float32, transposed per tile (padding rows 0)
    szero: np.ndarray  # (ntiles, n_groups, 16) float32: scale * zero in float32
    out: int
    K: int
    G: int  # G, or K when there is one group per row


def prepare_lut2(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, K: int,
                 G: int | None) -> Lut2Weights:
    """Rearrange a packed 2-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel.

    ``scale`` (out, n_groups) float16 or float32, ``zero`` (out, n_groups) uint8. Done once,
    offline; rows are padded to a multiple of 16 with code 0 and scale 0.
    """
    if not is_supported(K, G):
        raise DataError(f"The LUT kernel needs an AVX-512F CPU, K and G multiples of 16, but "
                         f"got K={K}, G={G}. Check is_supported(K, G) and use numba_cpu.gemv.")
    out = packed.shape[0]
    ng = 1 if G is None else -(-K // G)
    if packed.shape != (out, K // 4) or scale.shape != (out, ng) or zero.shape != (out, ng):
        raise DataError(f"A 2-bit weight with K={K}, G={G} needs packed (out, {K // 4}), scale "
                         f"and zero (out, {ng}), but got {packed.shape}, {scale.shape}, "
                         f"{zero.shape}. Pack the codes with pack(codes, 2).")
    ntiles = -(-out // TILE)
    pad = ntiles * TILE - out
    words = np.pad(np.ascontiguousarray(packed, np.uint8).view("<u4"), ((0, pad), (0, 0)))
    s32 = np.pad(np.asarray(scale, np.float32), ((0, pad), (0, 0)))
    sz = s32 * np.pad(np.asarray(zero, np.uint8), ((0, pad), (0, 0))).astype(np.float32)

    def per_tile(a: np.ndarray) -> np.ndarray:  # (rows, n) -> (ntiles, n, 16)
        return np.ascontiguousarray(a.reshape(ntiles, TILE, -1).transpose(0, 2, 1))

    return Lut2Weights(per_tile(words), per_tile(s32), per_tile(sz), out, K, K if ng == 1 else G)


@intrinsic
def _vload_idx(typingctx, arr, off):
    """Sixteen consecutive uint32 from ``arr`` at flat offset ``off``, as an int vector."""
    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VI), align=4)
    return i32x16(arr, off), codegen


@intrinsic(prefer_literal=True)
def _lookup(typingctx, table, off, idx, j):
    """Lane r = ``table[off + nibble j of idx[r]]``: one AVX-512 ``vpermps``."""
    shift = 4 * _literal(j, "j")

    def codegen(context, builder, sig, args):
        tab = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
        v = args[2]
        if shift:
            v = builder.lshr(v, ir.Constant(_VI, [shift] * TILE))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VI]),
                                            "llvm.x86.avx512.permvar.sf.512")
        return builder.call(fn, [tab, v])
    return f32x16(table, off, idx, j), codegen


@njit(**_OPTS)
def _prepare_x(x, G, ng, c0, c1):
    """(tab, nxs): the K/2 pair tables, flat, ``tab[16p + e] = c0[e] x[2p] + c1[e] x[2p+1]``,
    and minus the per-group sums of x (float64 in four chains, rounded to float32)."""
    K = x.shape[0]
    tab = np.empty(K * 8, np.float32)
    a, b = vload(c0, 0), vload(c1, 0)
    for p in range(K // 2):
        vstore(tab, 16 * p, vadd(vmul(a, vsplat(x[2 * p])), vmul(b, vsplat(x[2 * p + 1]))))
    nxs = np.empty(ng, np.float32)
    for g in range(ng):
        s0 = s1 = s2 = s3 = 0.0
        k, end = g * G, min(K, (g + 1) * G)
        while k + 4 <= end:  # groups are multiples of 16 positions
            s0 += np.float64(x[k])
            s1 += np.float64(x[k + 1])
            s2 += np.float64(x[k + 2])
            s3 += np.float64(x[k + 3])
            k += 4
        nxs[g] = -((s0 + s1) + (s2 + s3))
    return tab, nxs


@njit(inline="always", **_OPTS)
def _runs(flat, tab, base, base2, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (at flat offsets ``base``, ``base2``), 8 chains each."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vzero()
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = vzero()
    for q in range(q0, q1):
        if ahead:
            prefetch(flat, base + q * 16 + ahead)
            prefetch(flat, base2 + q * 16 + ahead)
        v, w, to = _vload_idx(flat, base + q * 16), _vload_idx(flat, base2 + q * 16), q * 128
        a0, b0 = vadd(a0, _lookup(tab, to, v, 0)), vadd(b0, _lookup(tab, to, w, 0))
        a1, b1 = vadd(a1, _lookup(tab, to + 16, v, 1)), vadd(b1, _lookup(tab, to + 16, w, 1))
        a2, b2 = vadd(a2, _lookup(tab, to + 32, v, 2)), vadd(b2, _lookup(tab, to + 32, w, 2))
        a3, b3 = vadd(a3, _lookup(tab, to + 48, v, 3)), vadd(b3, _lookup(tab, to + 48, w, 3))
        a4, b4 = vadd(a4, _lookup(tab, to + 64, v, 4)), vadd(b4, _lookup(tab, to + 64, w, 4))
        a5, b5 = vadd(a5, _lookup(tab, to + 80, v, 5)), vadd(b5, _lookup(tab, to + 80, w, 5))
        a6, b6 = vadd(a6, _lookup(tab, to + 96, v, 6)), vadd(b6, _lookup(tab, to + 96, w, 6))
        a7, b7 = vadd(a7, _lookup(tab, to + 112, v, 7)), vadd(b7, _lookup(tab, to + 112, w, 7))
    return (vadd(vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(a4, a5), vadd(a6, a7))),
            vadd(vadd(vadd(b0, b1), vadd(b2, b3)), vadd(vadd(b4, b5), vadd(b6, b7))))


@njit(inline="always", **_OPTS)
def _fold(acc, i, nt, s, opened, closes, sf, szf, o, nxg, ahead):
    """Tile i's part s of a group: added to the open group, or, at its end, to the totals.

    ``acc`` holds per tile of the task: sum_g scale * group sum (at 16 i), -sum_g scale * zero
    * xsum_g (at 16 (nt + i), exactly minus the positive sum) and the open group's sum.
    """
    if opened:  # the group began in an earlier K-block
        s = vadd(vload(acc, 16 * (2 * nt + i)), s)
    if not closes:
        vstore(acc, 16 * (2 * nt + i), s)
        return
    if ahead:
        prefetch(sf, o + ahead)
        prefetch(szf, o + ahead)
    vstore(acc, 16 * i, vmuladd(s, vload(sf, o), vload(acc, 16 * i)))
    z = 16 * (nt + i)
    vstore(acc, z, vmuladd(vload(szf, o), vsplat(nxg), vload(acc, z)))


@njit(parallel=True, **_OPTS)
def _gemv(idx, scale, szero, x, G, out, c0, c1, workers, tiles_per_task, block_runs, ahead):
    ntiles, nrun = idx.shape[0], idx.shape[1]
    ng = scale.shape[1]
    rpg = G // 16  # runs per group
    sahead = max(1, block_runs // rpg) * 16 if ahead else 0  # scales of the next K-block
    tab, nxs = _prepare_x(x, G, ng, c0, c1)
    flat, sf, szf = idx.reshape(idx.size), scale.reshape(scale.size), szero.reshape(szero.size)
    y = np.empty(ntiles * 16, np.float32)
    ntasks = (ntiles + tiles_per_task - 1) // tiles_per_task
    claimed = np.empty(1, np.int64)  # not np.zeros: that would be a parallel loop
    claimed[0] = 0
    for _ in prange(workers):  # one per thread; tasks are claimed, not preassigned
        acc = np.empty(tiles_per_task * 48, np.float32)  # see _fold
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
                    base, base2 = (t0 + i) * nrun * 16, (t0 + k) * nrun * 16
                    q = kb0
                    while q < kb1:
                        g = q // rpg
                        gend = min(nrun, (g + 1) * rpg)
                        qe = min(kb1, gend)
                        s, s2 = _runs(flat, tab, base, base2, q, qe, ahead)
                        _fold(acc, i, nt, s, q != g * rpg, qe == gend, sf, szf,
                              ((t0 + i) * ng + g) * 16, nxs[g], sahead)
                        if k != i:
                            _fold(acc, k, nt, s2, q != g * rpg, qe == gend, sf, szf,
                                  ((t0 + k) * ng + g) * 16, nxs[g], sahead)
                        q = qe
            for i in range(nt):
                vstore(y, (t0 + i) * 16, vadd(vload(acc, i * 16), vload(acc, (nt + i) * 16)))
    return y[:out]


def gemv_lut2(prepared: Lut2Weights, x: np.ndarray, workers: int = 1,
              tiles_per_task: int = 16, block_runs: int = BLOCK_RUNS,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut2` and x (K,) float32.

    ``workers`` parallel loops (more than Numba's thread count do not help) claim tasks of
    ``tiles_per_task`` tiles of 16 rows in turn; ``block_runs`` and ``ahead`` (prefetch
    distance in uint32, 0 for none) are tuning knobs, measured on one Zen 5 core.
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
                 _C0, _C1, workers, tiles_per_task, block_runs, ahead)
