"""16-lane SIMD vectors for Numba kernels, written as LLVM vector IR.

Why: with ``fastmath=False`` LLVM may not reorder float sums, so it leaves Numba's reduction
loops scalar, and its auto-vectorizer gives up on the short, byte-indexed loops that decoding
packed codes needs. Explicit ``<16 x float>`` / ``<16 x i32>`` values make every lane an
independent accumulator (no reassociation, deterministic), and LLVM maps them to AVX-512, AVX2,
SSE or NEON, whatever the host has. Only generic IR is emitted, never target intrinsics.

Importing this module imports numba; :mod:`mpsearch.kernels.numba_cpu` imports it lazily.
Offsets are flat element offsets from an array's data pointer; nothing is bounds-checked.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

from mpsearch.kernels._chunk_slots import chunk_slot

LANES = 16
# Every packed Numba kernel: float32 in a fixed order (no fast-math), compiled once to disk.
OPTS = {"fastmath": False, "cache": True}
_I32 = ir.IntType(32)
_VF = ir.VectorType(ir.FloatType(), LANES)
_VI = ir.VectorType(_I32, LANES)


def njit_as(name: str, **options) -> Callable:
    """``njit(**options)`` for a kernel a factory makes per width, under a name of its own.

    Numba names a compiled function (and its environment, which holds what its boxed results
    need) after its qualified name and a per-process counter. Closures from one factory share a
    qualified name, so two widths compiled in different processes can come back from the disk
    cache under one name, and the second one loaded then fails ("'descr' is NULL"). Renaming
    each closure (``gemv2``, ``gemv3``, ...) keeps their names, and their cache files, apart.
    """
    def wrap(fn: Callable) -> Callable:
        fn.__qualname__ = f"{fn.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
        fn.__name__ = name
        return njit(**options)(fn)
    return wrap


class VecType(types.Type):
    """A 16-lane vector held in registers: kind "f32" (float) or "i32" (int32)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(name=f"Vec{kind}x{LANES}")


f32x16 = VecType("f32")
i32x16 = VecType("i32")


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF if fe_type.kind == "f32" else _VI)


def _ptr(context, builder, arrty, arr, off, elt: ir.Type):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), elt.as_pointer())


def _splat(builder, value, vty: ir.VectorType):
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(_VI, [0] * LANES))


def _literal(ty, what: str) -> int:
    if not isinstance(ty, types.IntegerLiteral):
        raise TypeError(f"{what} must be a compile-time integer constant, got {ty}")
    return int(ty.literal_value)


@intrinsic
def vzero(typingctx):
    """All-zero float vector."""
    return f32x16(), lambda context, builder, sig, args: ir.Constant(_VF, None)


@intrinsic
def vsplat(typingctx, value):
    """A float32 scalar copied to every lane."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, v, _VF)
    return f32x16(value), codegen


@intrinsic
def vload(typingctx, arr, off):
    """Sixteen consecutive float32 from ``arr`` at flat offset ``off``."""
    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
    return f32x16(arr, off), codegen


@intrinsic
def vstore(typingctx, arr, off, vec):
    """Store a float vector into ``arr`` at flat offset ``off``."""
    def codegen(context, builder, sig, args):
        builder.store(args[2], _ptr(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
        return context.get_dummy_value()
    return types.none(arr, off, vec), codegen


@cache
def target_has(feature: str) -> bool:
    """Whether the CPU Numba compiles for has an LLVM feature ("f16c", "avx512f", ...): the
    host's, or with ``NUMBA_CPU_NAME`` set (portable caches) those named in ``NUMBA_CPU_FEATURES``."""
    if config.CPU_NAME not in (None, "host"):
        return f"+{feature}" in (config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get(feature, False))


def _half_to_float(builder, h16):
    """float16 bits (i16, or a vector of them) -> float32, exactly.

    ``fpext half`` where the target converts in hardware (F16C). Elsewhere
    (``NUMBA_CPU_NAME=generic``, ARM) LLVM would lower it to a libcall (``__extendhfsf2``) that
    Numba's JIT cannot resolve, so integer operations do it: magnitude bits shifted into a
    float32 and scaled by 2^112 give every finite half exactly (subnormals too); exponent 31
    maps to inf/NaN; the sign is put back last.
    """
    vec = isinstance(h16.type, ir.VectorType)
    if target_has("f16c"):
        return builder.fpext(builder.bitcast(h16, ir.VectorType(ir.HalfType(), LANES) if vec
                                             else ir.HalfType()), _VF if vec else ir.FloatType())
    i32 = ir.VectorType(_I32, LANES) if vec else _I32
    f32 = _VF if vec else ir.FloatType()
    const = (lambda n: ir.Constant(i32, [n] * LANES)) if vec else (lambda n: ir.Constant(i32, n))
    h = builder.zext(h16, i32)
    mag = builder.shl(builder.and_(h, const(0x7FFF)), const(13))
    scaled = builder.fmul(builder.bitcast(mag, f32),
                          ir.Constant(f32, [2.0 ** 112] * LANES) if vec else ir.Constant(f32, 2.0 ** 112))
    special = builder.icmp_unsigned(">=", mag, const(0x7C00 << 13))  # exponent 31: inf or NaN
    out = builder.select(special, builder.or_(mag, const(0x7F800000)),
                         builder.bitcast(scaled, i32))
    sign = builder.shl(builder.and_(h, const(0x8000)), const(16))
    return builder.bitcast(builder.or_(out, sign), f32)


@intrinsic
def vload_scale(typingctx, arr, off):
    """Sixteen scales as float32: from float16 bits (a uint16 array) or from float32."""
    is_half = arr.dtype == types.uint16

    def codegen(context, builder, sig, args):
        if not is_half:
            return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], _VF), align=4)
        vh = ir.VectorType(ir.IntType(16), LANES)
        return _half_to_float(builder, builder.load(
            _ptr(context, builder, sig.args[0], args[0], args[1], vh), align=2))
    return f32x16(arr, off), codegen


@intrinsic
def scale_at(typingctx, arr, off):
    """One scale as float32 (float16 bits in a uint16 array, or float32)."""
    is_half = arr.dtype == types.uint16

    def codegen(context, builder, sig, args):
        elt = ir.IntType(16) if is_half else ir.FloatType()
        v = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], elt))
        return _half_to_float(builder, v) if is_half else v
    return types.float32(arr, off), codegen


@intrinsic
def vload_u8f(typingctx, arr, off):
    """Sixteen uint8 at flat offset ``off``, converted to float32."""
    def codegen(context, builder, sig, args):
        vb = ir.VectorType(ir.IntType(8), LANES)
        return builder.uitofp(builder.load(_ptr(context, builder, sig.args[0], args[0], args[1],
                                                vb), align=1), _VF)
    return f32x16(arr, off), codegen


@intrinsic
def vgather(typingctx, arr, idx, off):
    """Lane l = ``arr[idx[off + l]]`` (float32 ``arr``, int32 ``idx``)."""
    def codegen(context, builder, sig, args):
        vec = ir.Constant(_VF, ir.Undefined)
        for lane in range(LANES):
            o = builder.add(args[2], ir.Constant(args[2].type, lane))
            i = builder.load(_ptr(context, builder, sig.args[1], args[1], o, _I32))
            i = builder.sext(i, args[2].type)
            v = builder.load(_ptr(context, builder, sig.args[0], args[0], i, ir.FloatType()))
            vec = builder.insert_element(vec, v, ir.Constant(_I32, lane))
        return vec
    return f32x16(arr, idx, off), codegen


def _binop(name: str):
    def typer(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])
        return f32x16(a, b), codegen
    typer.__name__ = f"v{name[1:]}"
    typer.__doc__ = f"Lane-wise {name[1:]} of two float vectors (IEEE, no fast-math)."
    return intrinsic(typer)


vadd = _binop("fadd")
vmul = _binop("fmul")


@intrinsic
def vmuladd(typingctx, a, b, acc):
    """``a * b + acc`` per lane; fused into one FMA where the CPU has one (``llvm.fmuladd``)."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VF, [_VF, _VF, _VF])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fmuladd.v16f32")
        return builder.call(fn, list(args))
    return f32x16(a, b, acc), codegen


@intrinsic
def vsum(typingctx, vec):
    """Sum of the 16 lanes in a fixed pairwise order (deterministic)."""
    def codegen(context, builder, sig, args):
        v, n = args[0], LANES
        while n > 1:
            half = ir.VectorType(_I32, n // 2)
            lo = builder.shuffle_vector(v, v, ir.Constant(half, list(range(n // 2))))
            hi = builder.shuffle_vector(v, v, ir.Constant(half, list(range(n // 2, n))))
            v, n = builder.fadd(lo, hi), n // 2
        return builder.extract_element(v, ir.Constant(_I32, 0))
    return types.float32(vec), codegen


def _load_bytes(builder, ptr, nbytes: int, width: int):
    """``nbytes`` bytes from ``ptr`` as a ``<width x i8>`` vector (the rest undefined).

    Read as plain loads of 64/32/16 bytes, never past ``ptr + nbytes``: a single masked load
    would also stay in bounds, but is slow when it straddles cache lines.
    """
    vty = ir.VectorType(ir.IntType(8), width)
    out, done = ir.Constant(vty, ir.Undefined), 0
    for piece in (64, 32, 16):
        while nbytes - done >= piece:
            pty = ir.VectorType(ir.IntType(8), piece)
            src = builder.bitcast(builder.gep(ptr, [ir.Constant(_I32, done)]), pty.as_pointer())
            part = builder.load(src, align=1)
            if piece < width:  # widen, then place at byte `done`
                part = builder.shuffle_vector(part, ir.Constant(pty, ir.Undefined), ir.Constant(
                    ir.VectorType(_I32, width), [min(i, piece) for i in range(width)]))
            out = builder.shuffle_vector(out, part, ir.Constant(
                ir.VectorType(_I32, width),
                [width + i - done if done <= i < done + piece else i for i in range(width)]))
            done += piece
    return out


@intrinsic(prefer_literal=True)
def load_chunks(typingctx, arr, off, bits, part):
    """The 16 eight-code chunks of one 128-code block, one chunk per int32 lane.

    A block of ``bits``-bit codes is ``16 * bits`` bytes at byte offset ``off``; chunk l is its
    bytes ``[bits*l, bits*l + bits)``. Part 0 puts bytes ``[0, min(bits, 4))`` of each chunk in
    its lane (codes 0..3, or 0..7 when bits <= 4); part 1 (bits > 4) bytes ``[bits//2, bits)``
    (codes 4..7). No byte outside the block is read.
    """
    b, p = _literal(bits, "bits"), _literal(part, "part")
    start, take = (0, min(b, 4)) if p == 0 else (b // 2, b - b // 2)
    nbytes = 16 * b
    width = 64 if nbytes <= 64 else 128
    # Lane byte t is chunk byte start + t; past the chunk it is 0 (index `width` picks the zero
    # vector) for one-register blocks, else any block byte (see _chunk_slots: masked later).
    pad = width if width == 64 else 0
    mask = [b * lane + start + t if t < take else pad
            for lane in range(LANES) for t in range(4)]

    def codegen(context, builder, sig, args):
        data = _load_bytes(builder, _ptr(context, builder, sig.args[0], args[0], args[1],
                                         ir.IntType(8)), nbytes, width)
        picked = builder.shuffle_vector(data, ir.Constant(data.type, None),
                                        ir.Constant(ir.VectorType(_I32, 64), mask))
        return builder.bitcast(picked, _VI)
    return i32x16(arr, off, bits, part), codegen


@intrinsic(prefer_literal=True)
def slot(typingctx, lo, hi, bits, j):
    """Code j (0..7) of every chunk as float32, times ``2**slot_exponents(bits)[j]``."""
    where = chunk_slot(_literal(bits, "bits"), _literal(j, "j"))
    mask = (1 << _literal(bits, "bits")) - 1

    def codegen(context, builder, sig, args):
        v = args[1] if where.hi else args[0]
        def const(n):
            return ir.Constant(_VI, [n] * LANES)
        if where.in_place:
            v = builder.and_(v, const(mask << where.shift))
        else:
            if where.shift:
                v = builder.lshr(v, const(where.shift))
            if where.needs_mask:
                v = builder.and_(v, const(mask))
        return builder.sitofp(v, _VF)
    return f32x16(lo, hi, bits, j), codegen


@intrinsic
def fetch_add(typingctx, arr, idx, value):
    """Atomically add ``value`` to ``arr[idx]`` (int64 array); return the value before.

    Lets parallel workers claim tasks from a shared counter (dynamic scheduling), so a thread
    that starts late, or shares its core with other work, simply takes fewer tasks.
    Acquire-release: what a thread wrote before its bump is visible to a thread that sees it.
    """
    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(64))
        add = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, add, "acq_rel")
    return types.int64(arr, idx, value), codegen


@intrinsic
def prefetch(typingctx, arr, off):
    """Hint the CPU to fetch the cache line of ``arr`` at flat offset ``off`` (``llvm.prefetch``).

    Never faults, also past the end of ``arr``; a no-op where the target has no prefetch.
    """
    def codegen(context, builder, sig, args):
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()
    return types.none(arr, off), codegen
