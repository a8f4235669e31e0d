"""The errors GPTQ leaves, per unit and width, for cost tables of plans quantized by GPTQ.

A round-to-nearest cost is ``score * ||Q_b(W) - W||^2``. GPTQ does not leave that error: it moves
each column's rounding error onto the columns not yet quantized, so its weight error is larger
but points where the layer's inputs rarely go. What it minimises is the layer-output error
``tr(dW H dW^T)`` under the input Hessian ``H = X^T X`` (damped as GPTQ damps it). The GPTQ
cost of unit u at b bits is that output error, normalised by the mean of ``diag(H)``::

    cost(u, b) = score_u * tr(dW H dW^T) / mean(diag H)

Why normalised: an estimator's score is a curvature per weight, which under a Kronecker view of
the layer's loss Hessian (input covariance times output sensitivity) already holds the mean
input energy ``mean(diag H)``; dividing it out leaves the score's scale and only changes *where*
the error counts. With uncorrelated inputs of equal energy (``H`` proportional to I) GPTQ is
round to nearest and the cost is exactly the round-to-nearest one.

Per group (a grouped quantizer): the group's share of the same error, the sum of GPTQ's
per-weight losses ``e^2`` over the group's weights (:class:`~mpsearch.kernels.gptq.GPTQResult`
``column_errors``: non-negative, summing exactly to the unit's damped output error), with the
whole unit quantized at that width.

Each unit is priced on its own, with inputs from the full-precision model (the cost table's
additivity assumption), and the Hessians are held one decoder block at a time when the model has
blocks (:func:`~mpsearch.sensitivity.blockwise.block_input_hessians`), else for all units of one
pass (small models).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.core.config import FLOAT_BITS, num_groups
from mpsearch.core.errors import ConfigError
from mpsearch.kernels.gptq import gptq_quantize
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.sensitivity.blockwise import block_input_hessians, decoder_blocks
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience_obs import input_hessians
from mpsearch.space.discover import SearchSpace, unit_modules

__all__ = ["gptq_errors", "gptq_normaliser", "gptq_unit_errors"]


def gptq_normaliser(hessian: torch.Tensor, damp: float) -> float:
    """``mean(diag)`` of the Hessian GPTQ minimises over: dead columns at 1, then damped."""
    diag = hessian.diagonal().to(torch.float64)
    diag = torch.where(diag == 0, torch.ones_like(diag), diag)
    return float(diag.mean()) * (1.0 + damp)


def gptq_unit_errors(w2d: torch.Tensor, hessian: torch.Tensor, bits: list[int], config) -> dict[int, torch.Tensor]:
    """Per width, the (out, K) float64 shares ``e^2 / mean(diag H_damped)`` of GPTQ's output error.

    Their sum is ``tr(dW H_d dW^T) / mean(diag H_d)``, which equals ``||Q_b(W) - W||^2`` of round
    to nearest when ``H`` is a multiple of the identity. Width 16 gives zeros.
    """
    norm = gptq_normaliser(hessian, config.damp)
    h = hessian.to(torch.float32)
    out: dict[int, torch.Tensor] = {}
    for b in bits:
        if b == FLOAT_BITS:
            out[b] = torch.zeros(w2d.shape, dtype=torch.float64)
            continue
        result = gptq_quantize(w2d, h, b, config, column_errors=True)
        out[b] = result.column_errors.to(torch.float64) / norm  # type: ignore[union-attr]
    return out


def gptq_errors(model: nn.Module, space: SearchSpace, calibration: Calibration, *, progress: bool = False
                ) -> tuple[dict[str, dict[int, float]], dict[str, np.ndarray] | None]:
    """GPTQ errors of every unit at each of its widths, and per group when the quantizer is grouped.

    Returns ``(unit_errors, group_errors)``: ``unit_errors[name][bits]`` the normalised output
    error; ``group_errors[name]`` an (out * n_groups, len(bits)) array, rows in the quantizer's
    row-major order and columns the sorted union of the space's widths (NaN where a unit does not
    allow one), as :func:`~mpsearch.pricing.tables.cost_table_from_groups` takes them, or None
    without a group size. GPTQ's settings (damp, block size, act order) are the space quantizer's.
    """
    config = space.quantizer
    all_bits = sorted({b for u in space.units for b in u.bits})
    modules = unit_modules(model, space)
    units: dict[str, dict[int, float]] = {}
    groups: dict[str, np.ndarray] | None = {} if config.group_size is not None else None

    def price(indices: list[int], hessians: list[torch.Tensor], rows: list[int]) -> None:
        for i, h, n in zip(indices, hessians, rows):
            unit = space.units[i]
            w2d = weight_matrix(modules[i].weight.detach(), unit.kind).float()
            h = h if n else torch.zeros_like(h)
            shares = gptq_unit_errors(w2d, h, list(unit.bits), config)
            units[unit.name] = {b: float(s.sum()) for b, s in shares.items()}
            if groups is not None:
                blocks, G = num_groups(unit.fan_in, config), int(config.group_size)  # type: ignore[arg-type]
                table = np.full((unit.out_features * blocks, len(all_bits)), np.nan)
                for j, b in enumerate(all_bits):
                    if b in shares:
                        padded = F.pad(shares[b], (0, blocks * G - unit.fan_in))
                        table[:, j] = padded.reshape(unit.out_features, blocks, G).sum(dim=2).reshape(-1).numpy()
                groups[unit.name] = table

    try:
        decoder_blocks(model, space)
        blockwise = True
    except ConfigError:
        blockwise = False
    with torch.no_grad():
        if blockwise:
            block_input_hessians(model, calibration, space, on_block=price, progress=progress)
        else:
            hessians, rows = input_hessians(model, calibration, space, progress)
            price(list(range(len(space.units))), hessians, rows)
    return units, groups
