"""The estimator interface, calibration data, and the one way to make a cost table.

An estimator scores how much each unit's loss suffers from weight noise; the
cost of unit u at b bits is then ``score_u * ||Q_b(W_u) - W_u||^2`` (HAWQ-V2/V3:
the mean Hessian diagonal times the squared quantization error). Estimators
that measure the damage of each bit width directly (ZeroQ's KL perturbation)
fill ``unit_costs`` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..costs import CostTable, cost_table_from_space
from ..errors import DataError, MPSearchError
from ..kernels.quantize import quant_errors, weight_matrix
from ..registry import Registry
from ..space import SearchSpace

ESTIMATORS: Registry["Estimator"] = Registry("estimator")

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _cross_entropy(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


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
    def classification(cls, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 128, name: str = "calibration") -> "Calibration":
        """Batches of (inputs, labels) under the cross-entropy loss."""
        if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs):
            raise DataError(
                f"calibration inputs must be a floating-point tensor, but got "
                f"{type(inputs).__name__}{'' if not isinstance(inputs, torch.Tensor) else ' of ' + str(inputs.dtype)}. "
                "Convert images with mpsearch.zoo.to_tensor."
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise DataError(f"calibration labels must be a 1-D int64 tensor, but got {getattr(labels, 'dtype', type(labels))}.")
        if len(inputs) != len(labels) or len(inputs) == 0:
            raise DataError(f"calibration inputs and labels must be equally long and non-empty, but got {len(inputs)} and {len(labels)}.")
        if batch_size < 1:
            raise DataError(f"`batch_size` must be at least 1, but got {batch_size}.")
        batches = tuple((inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(inputs), batch_size))
        return cls(batches=batches, sizes=tuple(len(b[1]) for b in batches), name=name)

    def mean_loss(self, model: nn.Module) -> torch.Tensor:
        total = self.n_samples
        return sum(self.loss_fn(model, b) * (s / total) for b, s in zip(self.batches, self.sizes))


@dataclass(frozen=True, kw_only=True, eq=False)
class Sensitivity:
    """Scores per unit, with provenance (method, settings, time)."""

    method: str
    scores: Mapping[str, float]
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    unit_costs: Mapping[str, Mapping[int, float]] | None = None

    def __post_init__(self) -> None:
        for name, value in self.scores.items():
            if not np.isfinite(value) or value < 0:
                raise MPSearchError(
                    f"sensitivity scores must be finite and non-negative, but {name!r} has {value!r} "
                    f"({self.method}). Use more calibration data or probes."
                )


class Estimator:
    """Base class: an estimator only scores; it never solves."""

    name: str = "estimator"

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


def build_cost_table(model: nn.Module, space: SearchSpace, sensitivity: Sensitivity, *, meta: Mapping[str, Any] | None = None) -> CostTable:
    """The cost table of any estimator: ``score * ||Q_b(W) - W||^2``, or the estimator's own costs."""
    start = time.perf_counter()
    if sensitivity.unit_costs is not None:
        per_unit = {n: dict(c) for n, c in sensitivity.unit_costs.items()}
    else:
        errors = quantization_errors(model, space)
        per_unit = {n: {b: sensitivity.scores[n] * e for b, e in errors[n].items()} for n in space.names}
    info = {"estimator": sensitivity.method, "estimator_seconds": sensitivity.seconds, "error_seconds": time.perf_counter() - start}
    info.update(meta or {})
    return cost_table_from_space(space, per_unit, meta=info)


def get_estimator(estimator: "str | Estimator", **options: Any) -> Estimator:
    if isinstance(estimator, Estimator):
        return estimator
    return ESTIMATORS.get(estimator)(**options)


def check_space_matches(space: SearchSpace, names: Sequence[str]) -> None:
    extra = sorted(set(names) - set(space.names))
    if extra:
        raise MPSearchError(f"scores must be for units of the space, but got unknown units {extra}.")
