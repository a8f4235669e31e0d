"""Exact bytes of a plan in mpsearch's packed format.

The packed layout of one unit with a (out, K) weight matrix at b bits (1..8), with
n_groups = ceil(K / G) (1 when the quantizer has no group size):

====================  =======================  ===============================================
buffer                shape                    bytes
====================  =======================  ===============================================
``packed`` uint8      (out, ceil(K*b/8))       out * ceil(K*b/8)  (rows padded to whole bytes)
``scale``             (out, n_groups)          out * n_groups * 2 (float16/bfloat16) or 4 (float32)
``zero`` uint8        (out, n_groups)          out * n_groups, affine only (symmetric has none)
``bias``              (out,)                   4 * out, float32, when the unit has a bias
====================  =======================  ===============================================

A unit whose groups have different widths (a group-wise plan) stores its groups one after the
other, each in ceil(len_g * b_g / 8) bytes (``len_g`` = G, the last group of a row may be
shorter), plus a uint8 width map of ``out * n_groups`` bytes (:attr:`PlanBytes.group_map`); its
scales and zero-points are as above (:mod:`mpsearch.kernels.packing_groups`).

A unit at 16 bits keeps its weight (and bias) in its float dtype. Every other parameter and
buffer of the model (batch norm, embeddings, layer norms, biases of float units) stays as it is.
Because each row is padded to whole bytes, a unit's codes take ``out * ceil(K*b/8)`` bytes, not
``out*K*b/8``: that is why the cost table gets an exact ``bytes_packed`` column here rather
than reusing ``storage_bits / 8``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.config import FLOAT_BITS, SCALE_BITS, QuantizerConfig
from mpsearch.core.errors import DataError
from mpsearch.core.storage import group_overhead_bits
from mpsearch.hardware_models.shapes import LayerShapes

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable

QUANT_BIAS_BYTES = 4  # the bias of a quantized unit is kept in float32


def _config(quantizer: QuantizerConfig | Mapping[str, Any] | None) -> QuantizerConfig:
    if quantizer is None:
        return QuantizerConfig()
    return quantizer if isinstance(quantizer, QuantizerConfig) else QuantizerConfig.from_dict(quantizer)


def weight_bytes(out_features: Any, fan_in: Any, bits: Any,
                 quantizer: QuantizerConfig | Mapping[str, Any] | None = None,
                 *, float_itemsize: Any = 4) -> np.ndarray:
    """Bytes of the weight buffers (packed codes, scales, zero-points) of units, broadcast.

    ``bits`` of 16 gives the float weight, ``out * K * float_itemsize``. Bias not included.

    >>> int(weight_bytes(16, 27, 3))  # 16 rows * ceil(81/8)=11 bytes + 16 fp16 scales
    208
    """
    cfg = _config(quantizer)
    out = np.asarray(out_features, np.int64)
    K = np.asarray(fan_in, np.int64)
    b = np.asarray(bits, np.int64)
    if np.any((b < 1) | ((b > 8) & (b != FLOAT_BITS))):
        raise DataError(f"`bits` must lie within 1..8 or be 16 (float), but got {np.unique(b).tolist()}. "
                        "Pass plan widths.")
    groups = np.ones_like(K) if cfg.group_size is None else -(-K // cfg.group_size)
    per_group = group_overhead_bits(cfg) // 8
    packed = out * (-(-K * b // 8)) + out * groups * per_group
    floating = out * K * np.asarray(float_itemsize, np.int64)
    return np.where(b == FLOAT_BITS, floating, packed)


def bytes_packed_column(costs: CostTable, shapes: LayerShapes) -> np.ndarray:
    """Resource column ``bytes_packed`` (items x choices): the weight buffers of each unit at each width.

    Add it with ``costs.with_resources(bytes_packed=bytes_packed_column(costs, shapes))`` and
    constrain it with ``Budget(kind="bytes_packed", value=...)``. Biases and float leftovers are
    the same for every plan, so they are left out of the column (see :func:`plan_bytes`).
    """
    s = shapes.for_costs(costs)
    bits = np.asarray(costs.bits, np.int64)[None, :]
    return weight_bytes(s.out_features[:, None], s.fan_in[:, None], bits, costs.quantizer).astype(np.float64)


@dataclass(frozen=True, kw_only=True, eq=False)
class MemoryInventory:
    """What a model stores besides its quantizable weights (arrays only; see
    :func:`mpsearch.pricing.profile.memory_inventory`)."""

    names: tuple[str, ...]
    out_features: np.ndarray
    fan_in: np.ndarray
    weight_itemsize: np.ndarray  # bytes per element of each unit's float weight
    bias_numel: np.ndarray  # 0 when a unit has no bias
    bias_itemsize: np.ndarray
    other_bytes: int  # every other parameter and buffer, in its own dtype


@dataclass(frozen=True)
class PlanBytes:
    """Bytes of a whole model under a plan, by buffer kind."""

    packed: int
    scale: int
    zero: int
    bias: int
    float_weights: int
    other: int
    group_map: int = 0  # the width map of units with per-group widths, 1 byte per group

    @property
    def total(self) -> int:
        return (self.packed + self.scale + self.zero + self.bias + self.float_weights + self.other
                + self.group_map)


def group_packed_bytes(fan_in: int, group_widths: Sequence[int], group_size: int) -> int:
    """Bytes of the codes of one unit with per-group widths (row-major groups of a row of
    ``fan_in`` inputs): each group takes ceil(len * b / 8), len = G but a shorter last group."""
    b = np.asarray(group_widths, np.int64).reshape(-1, -(-int(fan_in) // int(group_size)))
    lengths = np.full(b.shape[1], int(group_size), np.int64)
    lengths[-1] = int(fan_in) - (b.shape[1] - 1) * int(group_size)
    return int(((lengths[None, :] * b + 7) // 8).sum())


def plan_bytes(inventory: MemoryInventory, bits: Mapping[str, Any] | Sequence[int],
               quantizer: QuantizerConfig | Mapping[str, Any] | None = None) -> PlanBytes:
    """Exact bytes of the model under ``bits`` (a plan's ``bits`` mapping, or one width per unit).

    A mapping's entry may be a unit's per-group widths (a group-wise plan's tuple).
    Units missing from the mapping, and units at 16 bits, keep their float weights.
    """
    cfg = _config(quantizer)
    n = len(inventory.names)
    mixed: dict[int, Sequence[int]] = {}
    if isinstance(bits, Mapping):
        b = np.full(n, FLOAT_BITS, np.int64)
        index = {name: i for i, name in enumerate(inventory.names)}
        for name, value in bits.items():
            if name not in index:
                raise DataError(f"plan units must be quantizable units, but got {name!r}: "
                                f"{value!r}. Use a plan made for this model.")
            if isinstance(value, (tuple, list)):
                distinct = sorted(set(int(v) for v in value))
                if len(distinct) > 1 and (FLOAT_BITS in distinct or cfg.group_size is None):
                    raise DataError(f"per-group widths are packed when every group has 1..8 bits, but "
                                    f"{name!r} has {distinct}. Plan its groups under 16 bits.")
                if len(distinct) > 1:
                    mixed[index[name]] = value
                value = distinct[-1] if len(distinct) == 1 else max(distinct)
            b[index[name]] = int(value)
    else:
        b = np.asarray(bits, np.int64)
        if b.shape != (n,):
            raise DataError(f"`bits` must give one width per unit ({n}), but has shape {b.shape}.")
    quant = b != FLOAT_BITS
    out, K = inventory.out_features, inventory.fan_in
    groups = np.ones_like(K) if cfg.group_size is None else -(-K // cfg.group_size)
    rows_packed = out * (-(-K * b // 8))
    for i, value in mixed.items():
        rows_packed[i] = group_packed_bytes(int(K[i]), value, cfg.group_size)  # type: ignore[arg-type]
    packed = int(rows_packed[quant].sum())
    n_groups = int((out * groups)[quant].sum())
    group_map = int(sum(out[i] * groups[i] for i in mixed))
    scale = n_groups * SCALE_BITS[cfg.scale_dtype] // 8
    zero = n_groups * (group_overhead_bits(cfg) - SCALE_BITS[cfg.scale_dtype]) // 8
    bias_size = np.where(quant, QUANT_BIAS_BYTES, inventory.bias_itemsize)
    bias = int((inventory.bias_numel * bias_size).sum())
    floating = int((out * K * inventory.weight_itemsize)[~quant].sum())
    return PlanBytes(packed=packed, scale=scale, zero=zero, bias=bias, float_weights=floating,
                     other=int(inventory.other_bytes), group_map=group_map)
