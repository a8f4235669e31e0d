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

Per run and tile: 16 lookups (``vpermps``) and adds for 16 x 16 codes, into 4 chains per
plane. Exposing nibble j of an index word takes one op per lookup; ``vpermps`` and vector
shifts share the shuffle pipes, so with AVX512-IFMA the kernel shifts with ``vpmadd52huq``
instead, which runs on the multiply pipes (see :func:`_shr`): 0.32 -> 0.27 ms hot at 4096 x
4096 on one Zen 5 core. Blocking of K (tables kept in L1 across the tiles of a task), two tiles
per table load, prefetching, the group folding with scale and ``scale * zero * sum(x)`` and
the task claiming are those of the 2-bit kernel. Deterministic for any thread count and task
size. Needs AVX-512F (IFMA optional), K and G (if given) multiples of 16. Numba keys its
on-disk cache on this file only; after editing ``_numba_lut.py`` or ``_numba_simd.py``, touch
this file.

>>> import numpy as np
>>> from mpsearch.kernels.packing import pack
>>> codes = np.full((3, 16), 15, np.uint8)
>>> w = prepare_lut4(pack(codes, 4), np.full((3, 1), 0.5, np.float32), np.ones((3, 1), np.uint8),
...                  K=16, G=None)
>>> gemv_lut4(w, np.ones(16, np.float32)) if is_supported(16, None) else np.full(3, 112.0)
array([112., 112., 112.], dtype=float32)
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
from mpsearch.kernels._numba_lut import (
    _C0,
    _C1,
    _OPTS,
    TILE,
    _fold,
    _lookup,
    _prepare_x,
    _vload_idx,
)
from mpsearch.kernels._numba_lut import is_supported as _lut2_supported
from mpsearch.kernels._numba_simd import (
    _VI,
    _literal,
    fetch_add,
    i32x16,
    prefetch,
    vadd,
    vload,
    vmuladd,
    vsplat,
    vstore,
    vzero,
)

_VQ = ir.VectorType(ir.IntType(64), 8)
RUN = 16  # K-positions per run: one word per plane
BLOCK_RUNS = 16  # runs per K-block: 8 KiB of tables, reused from L1 by a task
AHEAD = BLOCK_RUNS * 32  # prefetch distance in uint32: the same tile's next K-block


def is_supported(K: int, G: int | None) -> bool:
    """Whether this kernel can run: an AVX-512F host, K and G (if given) multiples of 16."""
    return _lut2_supported(K, G)


class Lut4Weights(NamedTuple):
    """A 4-bit weight rearranged for :func:`gemv_lut4` (see the module docstring)."""

    idx: np.ndarray  # (ntiles, K // 16, 2, 16) uint32: lo-plane nibbles, hi-plane nibbles
    scale: np.ndarray  # (ntiles, n_groups, 16) float32, transposed per tile (padding rows 0)
    szero: np.ndarray  # (ntiles, n_groups, 16) float32: scale * zero in float32
    out: int
    K: int
    G: int  # G, or K when there is one group per row


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
                 G: int | None) -> Lut4Weights:
    """Rearrange a packed 4-bit weight (:func:`~mpsearch.kernels.packing.pack`) for the kernel.

    ``scale`` (out, n_groups) float16 or float32, ``zero`` (out, n_groups) uint8. Done once,
    offline; rows are padded to a multiple of 16 with code 0 and scale 0.
    """
    if not is_supported(K, G):
        raise DataError(f"The 4-bit LUT kernel needs an AVX-512F CPU, K and G multiples of 16, "
                         f"but got K={K}, G={G}. Check is_supported(K, G) and use "
                         f"numba_cpu.gemv.")
    out = packed.shape[0]
    ng = 1 if G is None else -(-K // G)
    if packed.shape != (out, K // 2) or scale.shape != (out, ng) or zero.shape != (out, ng):
        raise DataError(f"A 4-bit weight with K={K}, G={G} needs packed (out, {K // 2}), scale "
                         f"and zero (out, {ng}), but got {packed.shape}, {scale.shape}, "
                         f"{zero.shape}. Pack the codes with pack(codes, 4).")
    ntiles = -(-out // TILE)
    pad = ntiles * TILE - out
    words = np.pad(_plane_words(np.ascontiguousarray(packed, np.uint8)),
                   ((0, pad), (0, 0), (0, 0)))
    words = words.reshape(ntiles, TILE, K // RUN, 2).transpose(0, 2, 3, 1)
    s32 = np.pad(np.asarray(scale, np.float32), ((0, pad), (0, 0)))
    sz = s32 * np.pad(np.asarray(zero, np.uint8), ((0, pad), (0, 0))).astype(np.float32)

    def per_tile(a: np.ndarray) -> np.ndarray:  # (rows, n) -> (ntiles, n, 16)
        return np.ascontiguousarray(a.reshape(ntiles, TILE, a.shape[1]).transpose(0, 2, 1))

    return Lut4Weights(np.ascontiguousarray(words), per_tile(s32), per_tile(sz), out, K,
                       K if ng == 1 else G)


@cache
def _has_ifma() -> bool:
    if config.CPU_NAME not in (None, "host"):  # NUMBA_CPU_NAME set (portable caches)
        return "+avx512ifma" in (config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("avx512ifma", False))


@intrinsic(prefer_literal=True)
def _shr(typingctx, v, s):
    """``v >> s`` as far as the low 4 bits of every lane go (all ``vpermps`` reads), s <= 16.

    With AVX512-IFMA this is ``vpmadd52huq`` by ``2**(52 - s)``: per 64-bit pair of lanes the
    high half of the product is bits ``s..51`` of the pair, so both lanes' bits ``s..s+3`` land
    in their bits 0..3 (the odd lane's need ``32 + s + 3 <= 51``). It runs on the multiply
    pipes, leaving the shuffle pipes to ``vpermps``, which shared them with the shifts. Without
    IFMA it is a plain shift.
    """
    sh = _literal(s, "s")
    if not 0 < sh <= 16:
        raise TypeError(f"_shr needs 0 < s <= 16, got {sh}")

    def codegen(context, builder, sig, args):
        if not _has_ifma():
            return builder.lshr(args[0], ir.Constant(_VI, [sh] * TILE))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VQ, [_VQ] * 3),
                                            "llvm.x86.avx512.vpmadd52h.uq.512")
        r = builder.call(fn, [ir.Constant(_VQ, None), builder.bitcast(args[0], _VQ),
                              ir.Constant(_VQ, [1 << (52 - sh)] * 8)])
        return builder.bitcast(r, _VI)
    return i32x16(v, s), codegen


@intrinsic
def _shr16(typingctx, v):
    """``v >> 16`` per 32-bit lane: a plain shift (nibbles 4..7 of the index words)."""
    def codegen(context, builder, sig, args):
        return builder.lshr(args[0], ir.Constant(_VI, [16] * TILE))
    return i32x16(v), codegen


@njit(inline="always", **_OPTS)
def _word(tab, to, v, r0, r1, r2, r3):
    """Chains r0..r3 plus the lookups of nibbles 0..7 of ``v`` (nibble j in chain j % 4)."""
    u = _shr16(v)
    r0 = vadd(r0, _lookup(tab, to, v, 0))
    r1 = vadd(r1, _lookup(tab, to + 16, _shr(v, 4), 0))
    r2 = vadd(r2, _lookup(tab, to + 32, _shr(v, 8), 0))
    r3 = vadd(r3, _lookup(tab, to + 48, _shr(v, 12), 0))
    r0 = vadd(r0, _lookup(tab, to + 64, u, 0))
    r1 = vadd(r1, _lookup(tab, to + 80, _shr(u, 4), 0))
    r2 = vadd(r2, _lookup(tab, to + 96, _shr(u, 8), 0))
    r3 = vadd(r3, _lookup(tab, to + 112, _shr(u, 12), 0))
    return r0, r1, r2, r3


@njit(inline="always", **_OPTS)
def _runs4(flat, tab, base, base2, q0, q1, ahead):
    """Sums over runs q0..q1 of two tiles (at flat offsets ``base``, ``base2``).

    Returns the lo- and hi-plane sums of each tile; each plane sums into 4 chains (chain j % 4
    takes pair table j of a run), reduced in a fixed order.
    """
    a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = vzero()  # tile 1: lo, hi
    b0 = b1 = b2 = b3 = d0 = d1 = d2 = d3 = vzero()  # tile 2: lo, hi
    for q in range(q0, q1):
        o, o2 = base + q * 32, base2 + q * 32
        if ahead:
            prefetch(flat, o + ahead)
            prefetch(flat, o + ahead + 16)
            prefetch(flat, o2 + ahead)
            prefetch(flat, o2 + ahead + 16)
        to = q * 128
        a0, a1, a2, a3 = _word(tab, to, _vload_idx(flat, o), a0, a1, a2, a3)
        c0, c1, c2, c3 = _word(tab, to, _vload_idx(flat, o + 16), c0, c1, c2, c3)
        b0, b1, b2, b3 = _word(tab, to, _vload_idx(flat, o2), b0, b1, b2, b3)
        d0, d1, d2, d3 = _word(tab, to, _vload_idx(flat, o2 + 16), d0, d1, d2, d3)
    return (vadd(vadd(a0, a1), vadd(a2, a3)), vadd(vadd(c0, c1), vadd(c2, c3)),
            vadd(vadd(b0, b1), vadd(b2, b3)), vadd(vadd(d0, d1), vadd(d2, d3)))


@njit(parallel=True, **_OPTS)
def _gemv(idx, scale, szero, x, G, out, c0, c1, workers, tiles_per_task, block_runs, ahead):
    ntiles, nrun = idx.shape[0], idx.shape[1]
    ng = scale.shape[1]
    rpg = G // RUN  # runs per group
    sahead = max(1, block_runs // rpg) * 16 if ahead else 0  # scales of the next K-block
    tab, nxs = _prepare_x(x, G, ng, c0, c1)
    four = vsplat(np.float32(4.0))
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
                    base, base2 = (t0 + i) * nrun * 32, (t0 + k) * nrun * 32
                    q = kb0
                    while q < kb1:
                        g = q // rpg
                        gend = min(nrun, (g + 1) * rpg)
                        qe = min(kb1, gend)
                        lo, hi, lo2, hi2 = _runs4(flat, tab, base, base2, q, qe, ahead)
                        _fold(acc, i, nt, vmuladd(four, hi, lo), q != g * rpg, qe == gend, sf,
                              szf, ((t0 + i) * ng + g) * 16, nxs[g], sahead)
                        if k != i:
                            _fold(acc, k, nt, vmuladd(four, hi2, lo2), q != g * rpg, qe == gend,
                                  sf, szf, ((t0 + k) * ng + g) * 16, nxs[g], sahead)
                        q = qe
            for i in range(nt):
                vstore(y, (t0 + i) * 16, vadd(vload(acc, i * 16), vload(acc, (nt + i) * 16)))
    return y[:out]


def gemv_lut4(prepared: Lut4Weights, x: np.ndarray, workers: int = 1,
              tiles_per_task: int = 16, block_runs: int = BLOCK_RUNS,
              ahead: int = AHEAD) -> np.ndarray:
    """y = W x, (out,) float32, for a weight from :func:`prepare_lut4` and x (K,) float32.

    ``workers`` parallel loops (more than Numba's thread count do not help) claim tasks of
    ``tiles_per_task`` tiles of 16 rows in turn; ``block_runs`` (runs of 16 positions per
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
                 _C0, _C1, workers, tiles_per_task, block_runs, ahead)
