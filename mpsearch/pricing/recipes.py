"""The group-wise recipe for LLMs: error-weighted costs per group and width, budgets in code bits.

A group's plain score (the mean sensitivity of its weights) times its squared quantization
error ignores *where* in the group the error falls. The error-weighted cost of a group g at b
bits is the diagonal second-order estimate itself,

    cost[g, b] = sum_{j in g} s_j * (Q_b(W) - W)_j^2,

computed exactly at every width, with s_j a per-weight sensitivity: the empirical Fisher
diagonal (on the loss scale, so comparable across units: solve globally), or the mean squared
input of the weight's column ``[X^T X]_jj / rows`` (the output-error Hessian diagonal of the
unit, not on one scale across units: solve unit by unit, :class:`mpsearch.solvers.slim.PerUnitBudget`).
Sums over a unit give the layer-wise table of the same recipe.

Budgets: a mixed plan is compared with a uniform one at the same stored size, so a budget of B
*code* bits per weight is ``avg_bits <= B + overhead / G`` (:func:`code_budget`), the overhead
(scale and zero-point of each group) being the same at every width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.core.budget import Budget
from mpsearch.core.config import QuantizerConfig, num_groups
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError, CostTableError
from mpsearch.core.storage import group_overhead_bits
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.kernels.weighted_errors import weighted_group_errors
from mpsearch.pricing.tables import cost_table_from_groups, cost_table_from_space
from mpsearch.sensitivity._tensors import weights_requiring_grad
from mpsearch.sensitivity.blockwise import block_input_hessians
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.sensitivity.salience import fisher_diagonal
from mpsearch.sensitivity.salience_obs import input_hessians
from mpsearch.sensitivity.token_fisher import token_fisher_values
from mpsearch.space.discover import SearchSpace, unit_modules

__all__ = ["code_budget", "error_weighted_costs", "fisher_values", "input_values", "recipe_tables", "token_fisher_values"]


def code_budget(code_bits: float, quantizer: QuantizerConfig) -> Budget:
    """``avg_bits`` budget of ``code_bits`` per weight plus the per-group scale overhead of ``quantizer``.

    >>> code_budget(3, QuantizerConfig(scheme=Scheme.AFFINE, group_size=128)).value  # doctest: +SKIP
    3.1875
    """
    if quantizer.group_size is None:
        raise ConfigError("a code-bit budget needs a grouped quantizer, but group_size is None. Pass e.g. group_size=128.")
    return Budget.avg_bits(float(code_bits) + group_overhead_bits(quantizer) / quantizer.group_size)


def input_values(model: nn.Module, data: Calibration, space: SearchSpace, *, mode: str = "block",
                 progress: bool = False) -> list[torch.Tensor]:
    """``[X^T X]_jj / rows`` per unit as a (fan_in,) float64 tensor, block by block or from one whole-model pass."""
    out: list[torch.Tensor | None] = [None] * len(space.units)

    def keep(indices: list[int], stats: list[torch.Tensor], rows: list[int]) -> None:
        for i, s, n in zip(indices, stats, rows):
            out[i] = s / max(n, 1)

    if mode == "block":
        block_input_hessians(model, data, space, on_block=keep, diagonal=True, progress=progress)
    elif mode == "whole":
        hessians, rows = input_hessians(model, data, space, progress)
        keep(list(range(len(space.units))), [h.diagonal().clone() for h in hessians], rows)
    else:
        raise ConfigError(f"`mode` must be 'block' or 'whole', but got mode={mode!r}. Pass 'block'.")
    return [v for v in out if v is not None]


def fisher_values(model: nn.Module, data: Calibration, space: SearchSpace, *, micro_batch: int = 1,
                  progress: bool = False) -> list[torch.Tensor]:
    """The empirical Fisher diagonal per unit as an (out, fan_in) float64 tensor (whole model: it needs gradients)."""
    params = [m.weight for m in unit_modules(model, space)]
    with weights_requiring_grad(model, params):
        values = fisher_diagonal(model, data, params, micro_batch=micro_batch, progress=progress)
    return [weight_matrix(v, u.kind) for v, u in zip(values, space.units)]


def error_weighted_costs(model: nn.Module, space: SearchSpace, values: Sequence[torch.Tensor]
                         ) -> tuple[dict[str, np.ndarray], dict[str, dict[int, float]]]:
    """Group costs (groups, bits) and unit costs {bits: cost} of ``sum_j s_j (Q_b(W) - W)_j^2``.

    ``values[i]`` is unit i's per-weight sensitivity, (out, fan_in) or (fan_in,) for one value per
    input column. Group rows follow the quantizer's row-major order; bit columns the sorted union
    of the space's choices (NaN where the unit does not allow a width), as
    :func:`~mpsearch.pricing.tables.cost_table_from_groups` takes them.
    """
    if len(values) != len(space.units):
        raise CostTableError(f"values must give one tensor per unit, but got {len(values)} for {len(space.units)} units.")
    config = space.quantizer
    bits = sorted({b for u in space.units for b in u.bits})
    groups: dict[str, np.ndarray] = {}
    units: dict[str, dict[int, float]] = {}
    for unit, module, s in zip(space.units, unit_modules(model, space), values):
        w = weight_matrix(module.weight.detach(), unit.kind)
        if s.shape[-1:] != (unit.fan_in,) or s.dim() > 2 or (s.dim() == 2 and s.shape[0] not in (1, unit.out_features)):
            raise CostTableError(f"values of {unit.name!r} must be ({unit.out_features}, {unit.fan_in}) or ({unit.fan_in},), "
                                 f"but have {tuple(s.shape)}. Compute them on the same space.")
        table = np.full((unit.out_features * num_groups(unit.fan_in, config), len(bits)), np.nan)
        own = [j for j, b in enumerate(bits) if b in unit.bits]
        table[:, own] = weighted_group_errors(w, [bits[j] for j in own], config, s)
        groups[unit.name] = table
        units[unit.name] = {bits[j]: float(table[:, j].sum()) for j in own}
    return groups, units


def recipe_tables(model: nn.Module, space: SearchSpace, values: Sequence[torch.Tensor], *,
                  meta: Mapping[str, Any] | None = None) -> tuple[CostTable, CostTable]:
    """(group table, layer table) of the error-weighted recipe on ``space`` (which needs a group size)."""
    if space.quantizer.group_size is None:
        raise ConfigError("the group-wise recipe needs a grouped quantizer, but group_size is None. Pass e.g. group_size=128.")
    groups, units = error_weighted_costs(model, space, values)
    info = {"recipe": "error-weighted", **dict(meta or {})}
    return cost_table_from_groups(space, groups, meta=info), cost_table_from_space(space, units, meta=info)
