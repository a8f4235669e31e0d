"""A bit plan as llama.cpp GGUF tensor types: names, types, and the ``--tensor-type-file`` of llama-quantize.

llama.cpp stores each weight matrix in one *type*; the types, their bits per weight (block scales
included) and the type each plan width gets, with the 32-block fallbacks for row lengths the
256-weight k-quant blocks cannot take, live in :mod:`mpsearch.core.gguf_types`, shared with the
pricing stage. :func:`gguf_types` returns both the types and every fallback, so the change is
reported, never silent.

llama-quantize reads ``NAME=TYPE`` entries separated by white space, where NAME is a regular
expression searched (not matched) in the lower-cased tensor name, first entry winning. The file
written here anchors every name (``^blk\\.3\\.attn_q\\.weight$``) so ``blk.1`` never catches ``blk.11``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.core.gguf_types import GGUF_TYPES, WIDTH_TYPE, GgufType, type_for
from mpsearch.core.io import atomic_write_text
from mpsearch.core.plan import BitPlan

__all__ = ["GGUF_TYPES", "GgufType", "TypeChange", "gguf_layout", "gguf_name", "gguf_types", "read_dequantized",
           "read_gguf_types", "tensor_type_file", "write_tensor_type_file"]


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


def _reader(path: str | os.PathLike[str]):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} must be a readable GGUF file, but reading it failed: {err}. "
                        "Pass a file llama-quantize wrote.") from None


def _canonical(kind: str) -> str:
    return {k.lower(): k for k in GGUF_TYPES}.get(kind.lower(), kind.lower())


def read_gguf_types(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{tensor name: type name}`` of a GGUF file, as stored (read with the ``gguf`` package)."""
    return {t.name: _canonical(t.tensor_type.name) for t in _reader(path).tensors}


def read_dequantized(path: str | os.PathLike[str], names: set[str] | None = None) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(tensor name, type, float32 values)`` for each 2-D tensor of a GGUF file (or those in ``names``), decoded
    with the ``gguf`` package's dequantizers: the weights exactly as llama.cpp will compute with them.

    Arrays are (rows, row length): a Linear's (out_features, in_features), in GGUF's row order
    (see :func:`gguf_layout`). One tensor is decoded at a time, so a whole model is never held twice.
    """
    from gguf.quants import dequantize

    for tensor in _reader(path).tensors:
        if len(tensor.shape) != 2 or (names is not None and tensor.name not in names):
            continue
        rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
        values = dequantize(tensor.data, tensor.tensor_type).reshape(rows, cols)
        yield tensor.name, _canonical(tensor.tensor_type.name), np.ascontiguousarray(values, dtype=np.float32)


def gguf_layout(module: str, values: np.ndarray, n_head: int, n_kv_head: int) -> np.ndarray:
    """A Hugging Face weight-shaped array of ``module`` in GGUF's row order.

    llama.cpp's converter reorders the output rows of ``q_proj`` and ``k_proj`` for its rotary
    embedding (within each head, the even and odd halves are interleaved); every other tensor keeps
    its order. Use it to line up per-weight values (sensitivities) with tensors read from a GGUF file.
    """
    suffix = module.rpartition(".")[2]
    if suffix not in ("q_proj", "k_proj"):
        return values
    heads = n_head if suffix == "q_proj" else n_kv_head
    rows = values.shape[0]
    if rows % (2 * heads):
        raise PlanMismatchError(f"{module} must have a multiple of 2 * {heads} heads' rows, but has {rows}. "
                                "Pass the model's num_attention_heads and num_key_value_heads.")
    return values.reshape(heads, 2, rows // heads // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)
