"""The estimator interface and calibration data.

An estimator scores how much each unit's loss suffers from weight noise; the
cost of unit u at b bits is then ``score_u * ||Q_b(W_u) - W_u||^2`` (HAWQ-V2/V3:
the mean Hessian diagonal times the squared quantization error). Estimators
that measure the damage of each bit width directly (ZeroQ's KL perturbation)
fill ``unit_costs`` instead.

Scores are per-weight sensitivity densities: a unit's score multiplies the
unit's summed squared quantization error. Estimators that can (``supports_groups``)
also give ``group_scores[unit]`` of shape (out, n_blocks), one score per group of
G consecutive inputs of one output row (the quantizer's groups); with a grouped
quantizer, :func:`mpsearch.pricing.build_cost_table` then prices each group by
``group_score * ||Q_b(W_g) - W_g||^2`` in a group-granularity table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from torch import nn

from mpsearch.core.errors import MPSearchError
from mpsearch.core.registry import Registry
from mpsearch.sensitivity._data_checks import checked
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace

ESTIMATORS: Registry[Estimator] = Registry("estimator")

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
    ``double_backward`` (takes Hessian-vector products and keeps every batch's gradient graph: attention is
    switched to a twice-differentiable kind for the estimate, ``_attention``),
    ``contract_skip`` (why the generic contract suite cannot feed it, or None),
    ``embeddings`` (scores embedding-table units: False for estimators built on a layer's input
    activations, which a table lookup does not have; ``estimate`` then refuses them), and
    ``quick_options`` (settings cheap enough for the contract tests).
    """

    name: str = "estimator"
    supports_groups: bool = False
    needs_labels: bool = False
    double_backward: bool = False
    contract_skip: str | None = None
    embeddings: bool = True
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


def get_estimator(estimator: str | Estimator, **options: Any) -> Estimator:
    if isinstance(estimator, Estimator):
        return estimator
    return ESTIMATORS.get(estimator)(**options)


def check_space_matches(space: SearchSpace, names: Sequence[str]) -> None:
    extra = sorted(set(names) - set(space.names))
    if extra:
        raise MPSearchError(f"scores must be for units of the space, but got unknown units {extra}.")
