"""llama.cpp tensor types as data: name, block size, bits per weight, and the type each plan width gets.

Shared by the pricing stage (cost tables over GGUF types) and the deploy stage (writing the
types), so both agree on what a width means. A type's bits per weight include its block scales
(and minimums), so they are the real storage cost, as ggml's type sizes give them
(bytes per block * 8 / weights per block):

    q2_K 2.625  q3_K 3.4375  q4_K 4.5  q5_K 5.5  q6_K 6.5625  q8_0 8.5  f16 16
    q4_0 4.5    iq4_nl 4.5   q4_1 5.0  q5_0 5.5  q5_1 6.0

The k-quants take rows in super-blocks of 256 weights. A row length 256 does not divide (576 in
SmolLM2) gets a 32-block type of at least the plan's width: 2..4 -> ``iq4_nl`` (4-bit codes on a
non-linear grid, the same size as ``q4_0`` and more accurate), 5 -> ``q5_0``, 6..8 -> ``q8_0``; a row
length 32 does not divide gets ``f16``. So a fallback never lowers precision.

:func:`type_menu` lists the distinct types a row length can take, each under the widest width
that maps to it (``iq4_nl`` under 4, ``q8_0`` under 8): the columns of a GGUF type cost table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsearch.core.errors import PlanMismatchError

__all__ = ["GGUF_TYPES", "WIDTH_FALLBACK", "WIDTH_TYPE", "GgufType", "type_for", "type_menu"]


@dataclass(frozen=True)
class GgufType:
    """A llama.cpp tensor type: its name as llama-quantize spells it, block size and bits per weight."""

    name: str
    block: int
    bpw: float


GGUF_TYPES: dict[str, GgufType] = {t.name: t for t in (
    GgufType("q2_K", 256, 2.625), GgufType("q3_K", 256, 3.4375), GgufType("q4_K", 256, 4.5),
    GgufType("q5_K", 256, 5.5), GgufType("q6_K", 256, 6.5625), GgufType("q4_0", 32, 4.5),
    GgufType("iq4_nl", 32, 4.5), GgufType("q4_1", 32, 5.0), GgufType("q5_0", 32, 5.5),
    GgufType("q5_1", 32, 6.0), GgufType("q8_0", 32, 8.5), GgufType("f16", 1, 16.0), GgufType("f32", 1, 32.0))}

#: Plan width -> the type it asks for.
WIDTH_TYPE = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 7: "q8_0", 8: "q8_0", 16: "f16"}
#: 32-block fallback of each width: the narrowest 32-block type of at least that width.
WIDTH_FALLBACK = {2: "iq4_nl", 3: "iq4_nl", 4: "iq4_nl", 5: "q5_0", 6: "q8_0", 7: "q8_0", 8: "q8_0"}


def type_for(width: int, row_length: int) -> str:
    """The type a tensor of ``row_length`` gets for a plan ``width`` (module docstring)."""
    if width not in WIDTH_TYPE:
        raise PlanMismatchError(f"GGUF types exist for widths {sorted(WIDTH_TYPE)}, but got width {width}. "
                                "Search with bits from 2..8 (or 16).")
    planned = WIDTH_TYPE[width]
    if row_length % GGUF_TYPES[planned].block == 0:
        return planned
    fallback = WIDTH_FALLBACK[width]
    return fallback if row_length % GGUF_TYPES[fallback].block == 0 else "f16"


def type_menu(row_length: int) -> dict[int, str]:
    """``{width: type}``: each distinct quantized type a row of ``row_length`` can take, under the
    widest width in 2..8 that maps to it.

    >>> type_menu(1536)
    {2: 'q2_K', 3: 'q3_K', 4: 'q4_K', 5: 'q5_K', 6: 'q6_K', 8: 'q8_0'}
    >>> type_menu(576)
    {4: 'iq4_nl', 5: 'q5_0', 8: 'q8_0'}
    """
    widest: dict[str, int] = {}
    for width in range(2, 9):
        kind = type_for(width, row_length)
        if kind != "f16":
            widest[kind] = width
    return {w: k for k, w in sorted(widest.items(), key=lambda kv: kv[1])}
