"""A bit plan as llama.cpp GGUF tensor types: names, types, and the ``--tensor-type-file`` of llama-quantize.

llama.cpp stores each weight matrix in one *type*. The k-quants (``q2_K`` .. ``q6_K``) quantize rows
in super-blocks of 256 weights; ``q4_0``, ``q5_0``, ``q8_0`` and their ``_1`` variants in blocks of 32.
A type's bits per weight include its block scales, so they are the real storage cost:

    q2_K 2.625  q3_K 3.4375  q4_K 4.5  q5_K 5.5  q6_K 6.5625  q8_0 8.5  f16 16
    q4_0 4.5    q4_1 5.0     q5_0 5.5  q5_1 6.0

A plan width maps to the k-quant of that width (8 to ``q8_0``, 16 to ``f16``). A row length the
256-blocks do not divide (SmolLM2's 576) cannot take a k-quant; such a tensor gets the narrowest
32-block type of at least the plan's width (2..4 -> ``q4_0``, 5 -> ``q5_0``, 6..8 -> ``q8_0``), so
a fallback never lowers precision; a row length 32 does not divide gets ``f16``.
:func:`gguf_types` returns both the types and every fallback, so the change is reported, never silent.

llama-quantize reads ``NAME=TYPE`` entries separated by white space, where NAME is a regular
expression searched (not matched) in the lower-cased tensor name, first entry winning. The file
written here anchors every name (``^blk\\.3\\.attn_q\\.weight$``) so ``blk.1`` never catches ``blk.11``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.core.io import atomic_write_text
from mpsearch.core.plan import BitPlan

__all__ = ["GGUF_TYPES", "GgufType", "TypeChange", "gguf_name", "gguf_types", "read_gguf_types",
           "tensor_type_file", "write_tensor_type_file"]


@dataclass(frozen=True)
class GgufType:
    """A llama.cpp tensor type: its name as llama-quantize spells it, block size and bits per weight."""

    name: str
    block: int
    bpw: float


GGUF_TYPES: dict[str, GgufType] = {t.name: t for t in (
    GgufType("q2_K", 256, 2.625), GgufType("q3_K", 256, 3.4375), GgufType("q4_K", 256, 4.5),
    GgufType("q5_K", 256, 5.5), GgufType("q6_K", 256, 6.5625), GgufType("q4_0", 32, 4.5),
    GgufType("q4_1", 32, 5.0), GgufType("q5_0", 32, 5.5), GgufType("q5_1", 32, 6.0),
    GgufType("q8_0", 32, 8.5), GgufType("f16", 1, 16.0), GgufType("f32", 1, 32.0))}

#: Plan width -> the type it asks for.
WIDTH_TYPE = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 7: "q8_0", 8: "q8_0", 16: "f16"}
#: 32-block fallback of each width: the narrowest 32-block type of at least that width.
WIDTH_FALLBACK = {2: "q4_0", 3: "q4_0", 4: "q4_0", 5: "q5_0", 6: "q8_0", 7: "q8_0", 8: "q8_0"}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
_PROJ = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_TOP = {"model.embed_tokens": "token_embd", "lm_head": "output"}


def gguf_name(module: str, *, tied: bool = False) -> str:
    """GGUF tensor name of a Llama-architecture module: ``model.layers.3.self_attn.q_proj`` ->
    ``blk.3.attn_q.weight``. Unknown names are a :class:`PlanMismatchError`.

    ``tied``: ``lm_head`` reads the token embedding (a tied model's GGUF file has no
    ``output.weight``; llama.cpp multiplies by ``token_embd.weight``), so the unit is that tensor.
    """
    if tied and module == "lm_head":
        return "token_embd.weight"
    if module in _TOP:
        return f"{_TOP[module]}.weight"
    found = _LAYER.match(module)
    if found and found.group(3) in _PROJ:
        return f"blk.{found.group(1)}.{_PROJ[found.group(3)]}.weight"
    raise PlanMismatchError(
        f"plan units must be Llama-architecture modules that GGUF names (model.layers.N.self_attn.q_proj, "
        f"...mlp.down_proj, model.embed_tokens, lm_head), but got {module!r}. Export a plan for a Llama-family model.")


@dataclass(frozen=True)
class TypeChange:
    """A tensor whose planned type the GGUF row length cannot hold, and the type it gets instead."""

    unit: str
    tensor: str
    row_length: int
    planned: str
    written: str


def _width(unit: str, value: int | tuple[int, ...]) -> int:
    widths = set(value) if isinstance(value, tuple) else {value}
    if len(widths) != 1:
        raise PlanMismatchError(
            f"a GGUF tensor has one type, so a unit must have one width, but {unit!r} has widths {sorted(widths)}. "
            "Solve the plan per unit (no group_size mixing), or run check_export first to merge its groups.")
    width = widths.pop()
    if width not in WIDTH_TYPE:
        raise PlanMismatchError(f"GGUF types exist for widths {sorted(WIDTH_TYPE)}, but {unit!r} has width {width}. "
                                "Search with bits from 2..8 (or 16).")
    return width


def type_for(width: int, row_length: int) -> str:
    """The type a tensor of ``row_length`` gets for a plan ``width`` (module docstring)."""
    planned = WIDTH_TYPE[width]
    if row_length % GGUF_TYPES[planned].block == 0:
        return planned
    fallback = WIDTH_FALLBACK[width]
    return fallback if row_length % GGUF_TYPES[fallback].block == 0 else "f16"


def gguf_types(plan: BitPlan, row_lengths: Mapping[str, int], *,
               tied: bool = False) -> tuple[dict[str, str], list[TypeChange]]:
    """``({gguf tensor name: type}, fallbacks)`` for every unit of ``plan``.

    ``row_lengths`` maps each unit to its row length (a Linear's ``in_features``, an embedding's
    width), e.g. ``{n: m.weight.shape[1] for n, m in model.named_modules() if n in plan.bits}``.
    ``tied``: ``lm_head`` shares the token embedding (the file has no ``output.weight``), so its
    unit's type is written to ``token_embd.weight``, and no ``output.weight`` entry is made.
    """
    types: dict[str, str] = {}
    changes: list[TypeChange] = []
    for unit, value in plan.bits.items():
        if unit not in row_lengths:
            raise PlanMismatchError(f"every plan unit needs its row length, but {unit!r} has none. "
                                    "Pass the row lengths of the model the plan was made for.")
        width, tensor, row = _width(unit, value), gguf_name(unit, tied=tied), int(row_lengths[unit])
        if tensor in types:
            raise PlanMismatchError(f"each GGUF tensor takes one unit's type, but {unit!r} and another unit both "
                                    f"name {tensor!r}. A tied lm_head is the embedding's unit: drop model.embed_tokens.")
        types[tensor] = type_for(width, row)
        if types[tensor] != WIDTH_TYPE[width]:
            changes.append(TypeChange(unit, tensor, row, WIDTH_TYPE[width], types[tensor]))
    return types, changes


def tensor_type_file(types: Mapping[str, str]) -> str:
    """The ``--tensor-type-file`` text: one anchored ``NAME=TYPE`` entry per line."""
    lines = []
    for tensor, kind in sorted(types.items()):
        if kind not in GGUF_TYPES or "=" in tensor or not tensor or any(c.isspace() for c in tensor):
            raise DataError(f"tensor-type entries need a known type and a name without '=' or spaces, but got "
                            f"{tensor!r}={kind!r}. Use types from {sorted(GGUF_TYPES)}.")
        lines.append(f"^{re.escape(tensor.lower())}$={kind}")
    return "\n".join(lines) + "\n"


def write_tensor_type_file(types: Mapping[str, str], path: str | os.PathLike[str]) -> Path:
    """Write :func:`tensor_type_file` atomically; returns the path."""
    atomic_write_text(Path(path), tensor_type_file(types))
    return Path(path)


def read_gguf_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{tensor name: type name}`` of a GGUF file, as stored (read with the ``gguf`` package)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} must be a readable GGUF file, but reading it failed: {err}. "
                        "Pass a file llama-quantize wrote.") from None
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    canon = {k.lower(): k for k in GGUF_TYPES}
    return {name: canon.get(kind.lower(), kind.lower()) for name, kind in names.items()}
