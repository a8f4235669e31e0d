"""Where code j of an eight-code chunk sits in the int32 lanes the Numba kernel decodes.

Shared by the kernels (which decode) and by :mod:`mpsearch.kernels.numba_cpu` (which pre-scales
x to match), without importing numba. A chunk is ``bits`` bytes (see
:mod:`mpsearch.kernels.packing`); lane "lo" holds its bytes ``[0, min(bits, 4))`` and, when
bits > 4, lane "hi" its bytes ``[bits // 2, bits)``.

Unused lane bytes are zero when the block fits one 64-byte register (bits <= 4); for wider
blocks they hold arbitrary block bytes (a two-register byte shuffle, no third zero source), so
the top code of such a lane is masked too.

A code in the middle of a lane is isolated "in place": ``lane & (mask << shift)`` is
``code * 2**shift`` exactly, one instruction instead of a shift and a mask. The kernel then
multiplies by ``x * 2**-shift`` (exact in float32 while x is not tiny; the caller rescales tiny
x by a power of two). The top code of a lane only needs a shift, code 0 only a mask.
"""

from __future__ import annotations

from typing import NamedTuple


class Slot(NamedTuple):
    hi: bool  # read from the "hi" lane
    shift: int  # bit offset of the code inside its lane
    in_place: bool  # isolated with a mask at ``shift``: the value is code * 2**shift
    needs_mask: bool  # when not in place: mask after shifting (False for a lane's top code)


def chunk_slot(bits: int, j: int) -> Slot:
    """How code j (0..7) of a chunk of ``bits``-bit codes is isolated."""
    hi = bits > 4 and j >= 4
    shift = bits * j - (8 * (bits // 2) if hi else 0)
    lane_bits = 8 * (bits - bits // 2) if hi else 8 * min(bits, 4)
    top = shift + bits >= lane_bits
    clean = bits <= 4 or lane_bits == 32  # no arbitrary bytes above the lane's data
    return Slot(hi=hi, shift=shift, in_place=0 < shift and not top,
                needs_mask=not top or not clean)


def slot_exponents(bits: int) -> list[int]:
    """Per slot, the power of two the kernel's decoded value carries (x is scaled by its inverse)."""
    return [s.shift if s.in_place else 0 for s in (chunk_slot(bits, j) for j in range(8))]


#: Largest exponent of :func:`slot_exponents` over all widths (bits = 4, slot 6).
MAX_EXPONENT = max(max(slot_exponents(b)) for b in range(1, 9))
