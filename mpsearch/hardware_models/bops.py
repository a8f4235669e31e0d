"""Bit operations (BOPs): MACs x weight bits x activation bits, per unit.

BOPs are the usual hardware-agnostic compute cost of a mixed-precision network (used by
e.g. HAWQ-V3 and Uhlich et al.): one multiply-accumulate of a b_w-bit weight with a b_a-bit
activation counts b_w * b_a. MACs per sample come from a traced forward pass
(:func:`mpsearch.pricing.profile.trace_layers`): a convolution makes
``out_h * out_w * out_ch * in_ch / groups * kh * kw`` of them, a linear layer ``out * in`` per
token. Activation bits are one number for the whole model (8 by default; 32 for float).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.errors import DataError
from mpsearch.hardware_models.shapes import LayerShapes, plan_bits_array

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable

DEFAULT_ACT_BITS = 8
FLOAT_ACT_BITS = 32


def _act(act_bits: Any) -> int:
    if isinstance(act_bits, bool) or not isinstance(act_bits, (int, np.integer)) or not 1 <= act_bits <= 32:
        raise DataError(f"`act_bits` must be an integer within 1..32, but got act_bits={act_bits!r}. "
                        "Pass 8 for int8 activations or 32 for float.")
    return int(act_bits)


def bops_column(costs: CostTable, shapes: LayerShapes, *, act_bits: int = DEFAULT_ACT_BITS,
                batch: int = 1) -> np.ndarray:
    """Resource column ``bops`` (items x choices) for ``batch`` samples.

    >>> # costs = costs.with_resources(bops=bops_column(costs, trace_layers(model, x)))
    """
    s = shapes.for_costs(costs)
    bits = np.asarray(costs.bits, np.float64)[None, :]
    return s.macs[:, None] * float(batch) * bits * float(_act(act_bits))


def model_bops(shapes: LayerShapes, bits: Mapping[str, Any], *, act_bits: int = DEFAULT_ACT_BITS,
               batch: int = 1, float_weight_bits: int = FLOAT_ACT_BITS) -> float:
    """Whole-model BOPs of a plan; units absent from ``bits`` or at 16 bits count ``float_weight_bits``."""
    b = plan_bits_array(shapes, bits).astype(np.float64)
    b[b == 16] = float_weight_bits
    return float((shapes.macs * b).sum() * float(batch) * _act(act_bits))
