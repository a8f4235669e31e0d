"""The estimator interface, calibration data, and the one way to make a cost table.

An estimator scores how much each unit's loss suffers from weight noise; the
cost of unit u at b bits is then ``score_u * ||Q_b(W_u) - W_u||^2`` (HAWQ-V2/V3:
the mean Hessian diagonal times the squared quantization error). Estimators
that measure the damage of each bit width directly (ZeroQ's KL perturbation)
fill ``unit_costs`` instead.

Scores are per-weight sensitivity densities: a unit's score multiplies the
unit's summed squared quantization error. Estimators that can (``supports_groups``)
also give ``group_scores[unit]`` of shape (out, n_blocks), one score per group of
G consecutive inputs of one output row (the quantizer's groups); with a grouped
quantizer, :func:`build_cost_table` then prices each group by
``group_score * ||Q_b(W_g) - W_g||^2`` in a group-granularity table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..costs import CostTable, cost_table_from_groups, cost_table_from_space
from ..errors import DataError, MPSearchError
from ..kernels.quantize import (
    FLOAT_BITS,
    dequantize,
    num_groups,
    quant_errors,
    quantize,
    weight_matrix,
)
from ..registry import Registry
from ..space import SearchSpace
from ._data_checks import check_classification, check_finite, checked

ESTIMATORS: Registry[Estimator] = Registry("estimator")

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def pseudo_label_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy against the model's own predicted classes (for unlabeled or distilled inputs).

    The labels are the argmax of the logits, computed without gradient; they are
    piecewise constant in the weights, so gradients and Hessians equal those of
    cross-entropy with those labels held fixed. Unlike a distance to the model's own
    output, this loss has a non-zero gradient at the current weights.
    """
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    logits = model(x)
    return nn.functional.cross_entropy(logits, logits.detach().argmax(dim=1))


@dataclass(frozen=True, kw_only=True, eq=False)
class Calibration:
    """Calibration data: batches and the loss an estimator differentiates.

    ``loss_fn(model, batch)`` returns the mean loss of one batch; ``sizes`` are
    the batch sizes, used to weight batches into one mean over all samples.

    >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    >>> calib = Calibration.classification(x, y, batch_size=4)
    >>> len(calib.batches), calib.sizes
    (2, (4, 4))
    """

    batches: tuple[Any, ...]
    sizes: tuple[int, ...]
    loss_fn: LossFn = _cross_entropy
    name: str = "calibration"

    def __post_init__(self) -> None:
        if not self.batches:
            raise DataError("calibration data must hold at least one batch, but got none. Pass some samples.")
        if len(self.sizes) != len(self.batches) or any(s <= 0 for s in self.sizes):
            raise DataError(f"calibration `sizes` must give one positive size per batch, but got {self.sizes!r}.")

    @property
    def n_samples(self) -> int:
        return int(sum(self.sizes))

    @classmethod
    def classification(cls, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 128, name: str = "calibration") -> Calibration:
        """Batches of (inputs, labels) under the cross-entropy loss; dtype, shape, length and NaN checked here,
        the fit to the model when an estimator starts (``_data_checks``)."""
        check_classification(inputs, labels, batch_size)
        batches = tuple((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b[1]) for b in batches), name=name)

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor, *, loss_fn: LossFn | None = None, batch_size: int = 128, name: str = "inputs") -> Calibration:
        """Batches of unlabeled inputs (e.g. ZeroQ distilled data) for any estimator.

        Each batch is a bare tensor. ``loss_fn(model, x)`` defaults to
        :func:`pseudo_label_loss` (cross-entropy against the model's own predictions).

        >>> calib = Calibration.from_inputs(torch.randn(10, 3), batch_size=4)
        >>> calib.sizes
        (4, 4, 2)
        """
        if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs) or inputs.ndim < 1 or len(inputs) == 0:
            raise DataError(f"`inputs` must be a non-empty floating-point tensor, but got {type(inputs).__name__} "
                            f"{tuple(getattr(inputs, 'shape', ()))}. Pass e.g. distill_bn_data(model).inputs.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"`batch_size` must be an integer of at least 1, but got {batch_size!r}. Pass e.g. 64.")
        check_finite(inputs)
        batches = tuple(inputs[i : i + batch_size].detach() for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b) for b in batches), loss_fn=loss_fn or pseudo_label_loss, name=name)

    def mean_loss(self, model: nn.Module) -> torch.Tensor:
        total = self.n_samples
        return sum(self.loss_fn(model, b) * (s / total) for b, s in zip(self.batches, self.sizes))


@dataclass(frozen=True, kw_only=True, eq=False)
class Sensitivity:
    """Scores per unit (and optionally per group), with provenance (method, settings, time).

    ``group_scores[unit]`` has shape (out, n_blocks), groups in the quantizer's
    row-major order; ``None`` when the estimator or the quantizer has no groups.
    """

    method: str
    scores: Mapping[str, float]
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    unit_costs: Mapping[str, Mapping[int, float]] | None = None
    group_scores: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        for name, value in self.scores.items():
            if not np.isfinite(value) or value < 0:
                raise MPSearchError(
                    f"sensitivity scores must be finite and non-negative, but {name!r} has {value!r} "
                    f"({self.method}). Use more calibration data or probes."
                )
        if self.group_scores is not None:
            arrays = {n: np.asarray(a, np.float64) for n, a in self.group_scores.items()}
            for name, arr in arrays.items():
                if arr.ndim != 2 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                    raise MPSearchError(
                        f"group scores must be finite, non-negative (out, n_blocks) arrays, but {name!r} has shape "
                        f"{arr.shape} with min {np.nanmin(arr) if arr.size else None!r} ({self.method}). "
                        "Use more calibration data or probes."
                    )
            object.__setattr__(self, "group_scores", arrays)


class Estimator:
    """Base class: an estimator only scores; it never solves.

    Capabilities, read by the contract suite and the CLI without running anything:
    ``supports_groups`` (fills ``group_scores`` when the quantizer has a group size),
    ``needs_labels`` (needs a loss over labeled batches rather than any ``loss_fn``),
    ``contract_skip`` (why the generic contract suite cannot feed it, or None), and
    ``quick_options`` (settings cheap enough for the contract tests).
    """

    name: str = "estimator"
    supports_groups: bool = False
    needs_labels: bool = False
    contract_skip: str | None = None
    quick_options: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # every estimate() checks the data against the model first
        if "estimate" in cls.__dict__ and not getattr(cls.estimate, "__mpsearch_checked__", False):
            cls.estimate = checked(cls.estimate)  # type: ignore[method-assign]

    def settings(self) -> dict:
        """The options that change the result (part of the cache key)."""
        return {}

    def estimate(self, model: nn.Module, data: Calibration, space: SearchSpace) -> Sensitivity:
        raise NotImplementedError


def unit_modules(model: nn.Module, space: SearchSpace) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in space.names if n not in modules]
    if missing:
        raise MPSearchError(f"the search space must come from this model, but it has no modules {missing}. Re-run discover(model).")
    return [modules[n] for n in space.names]


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


def _group_costs(model: nn.Module, space: SearchSpace, sensitivity: Sensitivity) -> dict[str, np.ndarray]:
    errors = quantization_group_errors(model, space)
    costs = {}
    for unit in space.units:
        scores = (sensitivity.group_scores or {}).get(unit.name)
        expected = (unit.out_features, num_groups(unit.fan_in, space.quantizer))
        if scores is None or scores.shape != expected:
            got = None if scores is None else scores.shape
            raise MPSearchError(
                f"group scores must have shape (out, n_blocks) = {expected} for every unit, but {unit.name!r} has {got}. "
                "Estimate with the same search space (and group size) the cost table is built for."
            )
        costs[unit.name] = scores.reshape(-1, 1) * errors[unit.name]
    return costs


def build_cost_table(
    model: nn.Module, space: SearchSpace, sensitivity: Sensitivity, *, meta: Mapping[str, Any] | None = None, granularity: str = "auto"
) -> CostTable:
    """The cost table of any estimator: ``score * ||Q_b(W) - W||^2``, or the estimator's own costs.

    ``granularity="auto"`` gives one item per group of G inputs when the space's quantizer
    has a ``group_size`` and the sensitivity has ``group_scores`` (cost of a group:
    ``group_score * ||Q_b(W_g) - W_g||^2``), else one item per unit; ``"layer"`` or
    ``"group"`` force one (``"group"`` raises without group scores).

    >>> # sens = get_estimator("hessian_diag", seed=0).estimate(model, calib, space)
    >>> # costs = build_cost_table(model, space, sens)        # group items if space is grouped
    """
    if granularity not in ("auto", "layer", "group"):
        raise MPSearchError(f"`granularity` must be 'auto', 'layer' or 'group', but got {granularity!r}. Pass 'auto'.")
    start = time.perf_counter()
    grouped = space.quantizer.group_size is not None and sensitivity.group_scores is not None and sensitivity.unit_costs is None
    if granularity == "group" and not grouped:
        raise MPSearchError(
            f"group-granularity costs need a quantizer with group_size and group scores, but got group_size="
            f"{space.quantizer.group_size} and {sensitivity.method!r} {'without' if sensitivity.group_scores is None else 'with'} "
            "group scores. Use an estimator with supports_groups=True on a grouped search space, or granularity='layer'."
        )
    if grouped and granularity != "layer":
        info = {"estimator": sensitivity.method, "estimator_seconds": sensitivity.seconds}
        costs = _group_costs(model, space, sensitivity)
        info["error_seconds"] = time.perf_counter() - start
        return cost_table_from_groups(space, costs, meta={**info, **dict(meta or {})})
    if sensitivity.unit_costs is not None:
        per_unit = {n: dict(c) for n, c in sensitivity.unit_costs.items()}
    else:
        errors = quantization_errors(model, space)
        per_unit = {n: {b: sensitivity.scores[n] * e for b, e in errors[n].items()} for n in space.names}
    info = {"estimator": sensitivity.method, "estimator_seconds": sensitivity.seconds, "error_seconds": time.perf_counter() - start}
    info.update(meta or {})
    return cost_table_from_space(space, per_unit, meta=info)


def get_estimator(estimator: str | Estimator, **options: Any) -> Estimator:
    if isinstance(estimator, Estimator):
        return estimator
    return ESTIMATORS.get(estimator)(**options)


def check_space_matches(space: SearchSpace, names: Sequence[str]) -> None:
    extra = sorted(set(names) - set(space.names))
    if extra:
        raise MPSearchError(f"scores must be for units of the space, but got unknown units {extra}.")
