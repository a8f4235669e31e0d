"""The jitted pieces that the AVX-512 table-lookup GEMV kernels (2, 3 and 4 bits) share.

Every width keeps 16 output rows in the 16 vector lanes and looks products up in 16-entry float
tables built from x per call; they differ only in how a width's codes become 4-bit table
indices (one or more "planes" of index words; see :mod:`mpsearch.kernels._numba_lut`). Here:

* the lookups: ``vpermps`` (:func:`_lookup`), nibble shifts (:func:`_shr`, on the IFMA multiply
  pipes where the CPU has them, since ``vpermps`` and vector shifts compete for the shuffle
  pipes) and :func:`word`, the eight lookups of one index word into four chains;
* the tables: pairs of x (:func:`pair_tables`) and quads of x (:func:`quad_tables`), built
  by the workers in parts, and the group sums of x (:func:`neg_group_sums`);
* the group fold ``sum_g scale * group sum - scale * zero * xsum`` (:func:`fold`).

The weight layout is in :mod:`mpsearch.kernels._numba_lut_layout`, the parallel driver and each
width's inner loop in :mod:`mpsearch.kernels._numba_lut_driver`. Numba keys its disk cache on
the file of each compiled function: after editing this file, touch ``_numba_lut_driver.py`` too.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mpsearch.kernels._numba_simd import (
    _VF,
    _VI,
    OPTS,
    _literal,
    _ptr,
    f32x16,
    i32x16,
    prefetch,
    target_has,
    vadd,
    vload,
    vload_scale,
    vload_u8f,
    vmul,
    vmuladd,
    vsplat,
    vstore,
)

TILE = 16  # rows per tile = SIMD lanes
_VQ = ir.VectorType(ir.IntType(64), 8)
# Entry e of a pair table holds c0 * x[2p] + c1 * x[2p+1]; of a quad table 4 * sum_i bit_i x[4q+i].
_C0 = np.array([e % 4 for e in range(16)], np.float32)
_C1 = np.array([e // 4 for e in range(16)], np.float32)
_B4 = np.array([4.0 * ((e >> i) & 1) for i in range(4) for e in range(16)], np.float32)


@intrinsic
def load_words(typingctx, arr, off):
    """Sixteen consecutive uint32 from ``arr`` at flat offset ``off``, as an int vector."""
    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VI), align=4)
    return i32x16(arr, off), codegen


@intrinsic
def wait_until(typingctx, arr, idx, target):
    """Spin (with ``pause``) until ``arr[idx]`` (int64, bumped by :func:`fetch_add` in other
    threads) reaches ``target``; what those threads wrote before their bump is then visible.

    Only safe where whatever is still to bump the counter is already running, not waiting for
    this thread (a worker that claims a piece of shared work finishes it before it waits).
    """
    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(64))
        want = context.cast(builder, args[2], sig.args[2], types.int64)
        pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse2.pause")
        loop, done = builder.append_basic_block("spin"), builder.append_basic_block("spun")
        builder.branch(loop)
        builder.position_at_end(loop)
        have = builder.load_atomic(ptr, "acquire", 8)
        with builder.if_then(builder.icmp_signed("<", have, want)):
            builder.call(pause, [])
        builder.cbranch(builder.icmp_signed("<", have, want), loop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return types.none(arr, idx, target), codegen


@intrinsic
def _lookup(typingctx, table, off, idx):
    """Lane r = ``table[off + (idx[r] & 15)]``: one AVX-512 ``vpermps``."""
    def codegen(context, builder, sig, args):
        tab = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VI]),
                                            "llvm.x86.avx512.permvar.sf.512")
        return builder.call(fn, [tab, args[2]])
    return f32x16(table, off, idx), codegen


@intrinsic(prefer_literal=True)
def _shr(typingctx, v, s):
    """``v >> s`` as far as the low 4 bits of every lane go (all ``vpermps`` reads), s <= 16.

    With AVX512-IFMA this is ``vpmadd52huq`` by ``2**(52 - s)``: per 64-bit pair of lanes the
    high half of the product is bits ``s..51`` of the pair, so both lanes' bits ``s..s+3`` land
    in their bits 0..3 (the odd lane's need ``32 + s + 3 <= 51``). It runs on the multiply
    pipes and leaves the shuffle pipes to ``vpermps``. Without IFMA it is a plain shift, also
    for s = 16. On the benchmark machine (AMD EPYC, 2 threads, 4096 x 4096, weights in cache)
    the kernels were 4 % (2 bits) and 8 % (4 bits) faster than with plain shifts, and their
    outputs bit-identical (interleaved A/B, 2026-11-24).
    """
    sh = _literal(s, "s")
    if not 0 < sh <= 16:
        raise TypeError(f"_shr needs 0 < s <= 16, got {sh}")

    def codegen(context, builder, sig, args):
        if sh == 16 or not target_has("avx512ifma"):
            return builder.lshr(args[0], ir.Constant(_VI, [sh] * TILE))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VQ, [_VQ] * 3),
                                            "llvm.x86.avx512.vpmadd52h.uq.512")
        r = builder.call(fn, [ir.Constant(_VQ, None), builder.bitcast(args[0], _VQ),
                              ir.Constant(_VQ, [1 << (52 - sh)] * 8)])
        return builder.bitcast(r, _VI)
    return i32x16(v, s), codegen


@njit(inline="always", **OPTS)
def word(tab, to, v, r0, r1, r2, r3):
    """Chains r0..r3 plus the lookups of nibbles 0..7 of ``v`` in tables ``to + 16 j``
    (nibble j into chain j % 4)."""
    u = _shr(v, 16)
    r0 = vadd(r0, _lookup(tab, to, v))
    r1 = vadd(r1, _lookup(tab, to + 16, _shr(v, 4)))
    r2 = vadd(r2, _lookup(tab, to + 32, _shr(v, 8)))
    r3 = vadd(r3, _lookup(tab, to + 48, _shr(v, 12)))
    r0 = vadd(r0, _lookup(tab, to + 64, u))
    r1 = vadd(r1, _lookup(tab, to + 80, _shr(u, 4)))
    r2 = vadd(r2, _lookup(tab, to + 96, _shr(u, 8)))
    r3 = vadd(r3, _lookup(tab, to + 112, _shr(u, 12)))
    return r0, r1, r2, r3


@njit(inline="always", **OPTS)
def chains_sum(r0, r1, r2, r3):
    """The four chains of a tile, added in a fixed order."""
    return vadd(vadd(r0, r1), vadd(r2, r3))


@njit(inline="always", **OPTS)
def pair_tables(x, tab, k0, k1):
    """Pair tables of positions k0..k1 (even) into ``tab`` (K * 8 float32, flat):
    ``tab[16p + e] = c0(e) x[2p] + c1(e) x[2p+1]``."""
    a, b = vload(_C0, 0), vload(_C1, 0)
    for p in range(k0 // 2, k1 // 2):
        vstore(tab, 16 * p, vadd(vmul(a, vsplat(x[2 * p])), vmul(b, vsplat(x[2 * p + 1]))))


@njit(inline="always", **OPTS)
def quad_tables(x, tab, k0, k1):
    """Quad tables of positions k0..k1 (multiples of 4) into ``tab`` (K * 4 float32, flat):
    ``tab[16q + e] = 4 * sum_i bit_i(e) * x[4q + i]``."""
    b0, b1, b2, b3 = vload(_B4, 0), vload(_B4, 16), vload(_B4, 32), vload(_B4, 48)
    for q in range(k0 // 4, k1 // 4):
        k = 4 * q
        vstore(tab, 16 * q, vadd(vadd(vmul(b0, vsplat(x[k])), vmul(b1, vsplat(x[k + 1]))),
                                 vadd(vmul(b2, vsplat(x[k + 2])), vmul(b3, vsplat(x[k + 3])))))


@njit(inline="always", **OPTS)
def neg_group_sums(x, G, ng):
    """Minus the per-group sums of x (float64 in four chains, rounded to float32)."""
    K = x.shape[0]
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
    return nxs


@njit(inline="always", **OPTS)
def fold(acc, i, nt, s, opened, closes, sf, zf, o, nxg, ahead):
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
        prefetch(zf, o + ahead)
    sv = vload_scale(sf, o)
    vstore(acc, 16 * i, vmuladd(s, sv, vload(acc, 16 * i)))
    z = 16 * (nt + i)
    vstore(acc, z, vmuladd(vmul(sv, vload_u8f(zf, o)), vsplat(nxg), vload(acc, z)))
