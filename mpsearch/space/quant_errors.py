"""What the quantizer does to each unit of a search space: squared weight errors per width."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from mpsearch.core.config import FLOAT_BITS, num_groups
from mpsearch.kernels.quantize import dequantize, quant_errors, quantize, weight_matrix
from mpsearch.space.discover import SearchSpace, unit_modules


def quantization_errors(model: nn.Module, space: SearchSpace) -> dict[str, dict[int, float]]:
    """||Q_b(W_u) - W_u||^2 for every unit and each of its bit choices."""
    out: dict[str, dict[int, float]] = {}
    for unit, module in zip(space.units, unit_modules(model, space)):
        w2d = weight_matrix(module.weight.detach(), unit.kind)
        errs = quant_errors(w2d, list(unit.bits), space.quantizer)
        out[unit.name] = {b: float(e) for b, e in zip(unit.bits, errs)}
    return out


def quantization_group_errors(model: nn.Module, space: SearchSpace) -> dict[str, np.ndarray]:
    """||Q_b(W_g) - W_g||^2 per group: (out * n_blocks, len(bits)) per unit, bits = sorted union of choices.

    Rows follow the row-major (output row, block) order; columns a unit does not allow are NaN.
    """
    config = space.quantizer
    bits = sorted({b for u in space.units for b in u.bits})
    out: dict[str, np.ndarray] = {}
    for unit, module in zip(space.units, unit_modules(model, space)):
        w2d = weight_matrix(module.weight.detach(), unit.kind).double()
        rows, fan_in = w2d.shape
        n = num_groups(fan_in, config)
        width = fan_in if n == 1 else int(config.group_size)  # type: ignore[arg-type]
        table = np.full((rows * n, len(bits)), np.nan)
        for j, b in enumerate(bits):
            if b in unit.bits:
                diff = (dequantize(quantize(w2d.float(), b, config)).double() - w2d) if b != FLOAT_BITS else w2d * 0
                sq = F.pad(diff.square(), (0, n * width - fan_in)).reshape(rows, n, width).sum(dim=2)
                table[:, j] = sq.reshape(-1).numpy()
        out[unit.name] = table
    return out
