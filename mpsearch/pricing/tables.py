"""Stage 3: pricing. Scores times quantizer errors become a :class:`CostTable`.

The cost of unit u at b bits is ``score_u * ||Q_b(W_u) - W_u||^2`` (HAWQ-V2/V3), or the
estimator's own per-width costs; with a grouped quantizer and group scores, one item per group
of G inputs of one output row. Storage follows the one accounting rule in
:mod:`mpsearch.core.storage`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from mpsearch.core.config import group_sizes, num_groups
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import CostTableError, MPSearchError
from mpsearch.core.quality import estimate_quality, warn_if_noisy
from mpsearch.core.storage import overhead_bits
from mpsearch.pricing.gptq_errors import gptq_errors
from mpsearch.sensitivity.base import Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace
from mpsearch.space.quant_errors import quantization_errors, quantization_group_errors


def _space_meta(space: SearchSpace) -> dict[str, Any]:
    """What a cost table keeps of its space besides the units: the units left out by include/exclude
    (planned at 16 bits) and, when there are any, the modules that cannot be quantized (so that
    ``mpsearch search`` can name them)."""
    out: dict[str, Any] = {"float_units": list(space.float_units)}
    if space.float_modules:
        out["float_modules"] = [{"name": m.name, "kind": m.kind, "n_weights": m.n_weights, "reason": m.reason}
                                for m in space.float_modules]
    return out


def cost_table_from_space(
    space: SearchSpace,
    unit_costs: Mapping[str, Mapping[int, float]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> CostTable:
    """Build a layer-granularity :class:`CostTable` from per-unit, per-bits costs.

    Storage counts the codes and the scale/zero-point overhead of the space's quantizer.
    """
    bits = tuple(sorted({b for u in space.units for b in u.bits}))
    index = {name: i for i, name in enumerate(space.names)}
    n, c = len(space.units), len(bits)
    cost = np.zeros((n, c))
    storage = np.zeros((n, c))
    allowed = np.zeros((n, c), bool)
    for i, unit in enumerate(space.units):
        per_bits = unit_costs.get(unit.name)
        if per_bits is None:
            raise CostTableError(f"costs must cover every unit, but {unit.name!r} has none.")
        for j, b in enumerate(bits):
            if b in unit.bits:
                allowed[i, j] = True
                cost[i, j] = float(per_bits[b])
                storage[i, j] = unit.n_weights * b + overhead_bits(unit.out_features, unit.fan_in, b, space.quantizer)
    ties = tuple(tuple(index[n] for n in tie) for tie in space.ties)
    return CostTable(
        items=space.names, bits=bits, cost=cost, storage_bits=storage,
        n_weights=np.array([u.n_weights for u in space.units]), allowed=allowed, ties=ties,
        quantizer=space.quantizer.to_dict(), meta={**dict(meta or {}), **_space_meta(space)},
    )


def cost_table_from_groups(
    space: SearchSpace,
    group_costs: Mapping[str, np.ndarray],
    *,
    meta: Mapping[str, Any] | None = None,
) -> CostTable:
    """Build a group-granularity :class:`CostTable` (one item per group of G inputs of one output row).

    ``group_costs[unit]`` has shape (n_groups, len(bits)) with the unit's groups in row-major
    order (output row, then block), columns following the sorted union of the space's bit
    choices (NaN where a unit does not allow a width). Storage counts each group's codes
    (the last block of a row may be partial) plus its scale and zero-point.
    """
    G = space.quantizer.group_size
    if G is None:
        raise CostTableError("group-wise cost tables need a quantizer with group_size, but it is None. "
                             "Pass e.g. QuantizerConfig(group_size=128).")
    bits = tuple(sorted({b for u in space.units for b in u.bits}))
    counts, costs_parts, storage_parts, weight_parts, allowed_parts = [], [], [], [], []
    for unit in space.units:
        blocks = num_groups(unit.fan_in, space.quantizer)
        n = unit.out_features * blocks
        arr = np.asarray(group_costs.get(unit.name, np.empty(0)), np.float64)
        if arr.shape != (n, len(bits)):
            raise CostTableError(f"group costs of {unit.name!r} must have shape {(n, len(bits))}, but have {arr.shape}.")
        per_group = np.tile(group_sizes(unit.fan_in, space.quantizer), unit.out_features)
        ok = np.array([b in unit.bits for b in bits])
        over = np.array([overhead_bits(1, G, b, space.quantizer) if ok[j] else 0 for j, b in enumerate(bits)], np.float64)
        counts.append(n)
        costs_parts.append(np.where(ok, arr, 0.0))
        storage_parts.append(per_group[:, None] * np.asarray(bits, np.float64)[None, :] + over[None, :])
        weight_parts.append(per_group)
        allowed_parts.append(np.broadcast_to(ok, (n, len(bits))))
    if any(t for t in space.ties):
        raise CostTableError("ties are supported at layer granularity only; drop them for group-wise tables.")
    return CostTable(
        items=GroupIndex(space.names, counts), bits=bits, cost=np.concatenate(costs_parts),
        storage_bits=np.concatenate(storage_parts), n_weights=np.concatenate(weight_parts),
        allowed=np.concatenate(allowed_parts), quantizer=space.quantizer.to_dict(),
        meta={**dict(meta or {}), "granularity": "group", **_space_meta(space)},
    )


def _group_costs(model: nn.Module, space: SearchSpace, sensitivity: Sensitivity,
                 errors: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    errors = quantization_group_errors(model, space) if errors is None else errors
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


def _check_error(error: str, space: SearchSpace, sensitivity: Sensitivity, calibration: Calibration | None) -> None:
    """The rules of ``build_cost_table``'s ``error`` option."""
    if error not in ("rtn", "gptq"):
        raise MPSearchError(f"`error` must be 'rtn' or 'gptq', but got error={error!r}. Pass 'rtn' (round to nearest) "
                            "or 'gptq' for a GPTQ quantizer.")
    if error != "gptq":
        return
    for failed, rule, fix in (
        (space.quantizer.method != "gptq", f"a space whose quantizer has method='gptq', but it has "
         f"method={space.quantizer.method!r}", "Discover the space with quantizer=QuantizerConfig(method='gptq', ...)."),
        (calibration is None, "the calibration data GPTQ runs on, but got calibration=None",
         "Pass calibration=<the Calibration of the estimate>."),
        (sensitivity.unit_costs is not None, f"an estimator with scores, but {sensitivity.method!r} gives its own "
         "per-width costs", "Use a score estimator (e.g. fisher) or error='rtn'."),
    ):
        if failed:
            raise MPSearchError(f"error='gptq' prices the error GPTQ leaves and needs {rule}. {fix}")


def build_cost_table(
    model: nn.Module, space: SearchSpace, sensitivity: Sensitivity, *, meta: Mapping[str, Any] | None = None, granularity: str = "auto",
    error: str = "rtn", calibration: Calibration | None = None,
) -> CostTable:
    """The cost table of any estimator: ``score * ||Q_b(W) - W||^2``, or the estimator's own costs.

    ``error="gptq"`` prices the error GPTQ leaves instead of round to nearest's, for a space whose
    quantizer has ``method="gptq"``: ``score * tr(dW H dW^T) / mean(diag H)`` with GPTQ's own
    damped input Hessian from ``calibration`` (:mod:`mpsearch.pricing.gptq_errors`), per unit or
    per group.

    ``granularity="auto"`` gives one item per group of G inputs when the space's quantizer
    has a ``group_size`` and the sensitivity has ``group_scores`` (cost of a group:
    ``group_score * ||Q_b(W_g) - W_g||^2``), else one item per unit; ``"layer"`` or
    ``"group"`` force one (``"group"`` raises without group scores).

    A sampled estimate's error figures go into ``meta["estimate_quality"]`` (and from there into
    every plan solved from the table); an estimate too noisy to trust raises a
    :class:`~mpsearch.core.errors.NoisyEstimateWarning` (:mod:`mpsearch.core.quality`).

    >>> # sens = get_estimator("hessian_diag", seed=0).estimate(model, calib, space)
    >>> # costs = build_cost_table(model, space, sens)        # group items if space is grouped
    """
    if granularity not in ("auto", "layer", "group"):
        raise MPSearchError(f"`granularity` must be 'auto', 'layer' or 'group', but got {granularity!r}. Pass 'auto'.")
    _check_error(error, space, sensitivity, calibration)
    start = time.perf_counter()
    quality = estimate_quality(sensitivity.method, sensitivity.details, sensitivity.settings,
                               [u.name for u in space.units if not u.pinned])
    if quality is not None:  # recorded in the table, and so in every plan solved from it
        meta = {**dict(meta or {}), "estimate_quality": quality}
        warn_if_noisy(quality)
    grouped = space.quantizer.group_size is not None and sensitivity.group_scores is not None and sensitivity.unit_costs is None
    if granularity == "group" and not grouped:
        raise MPSearchError(
            f"group-granularity costs need a quantizer with group_size and group scores, but got group_size="
            f"{space.quantizer.group_size} and {sensitivity.method!r} {'without' if sensitivity.group_scores is None else 'with'} "
            "group scores. Use an estimator with supports_groups=True on a grouped search space, or granularity='layer'."
        )
    unit_errors, group_errors = gptq_errors(model, space, calibration) if error == "gptq" else (None, None)  # type: ignore[arg-type]
    if grouped and granularity != "layer":
        info = {"estimator": sensitivity.method, "estimator_seconds": sensitivity.seconds, "error": error}
        costs = _group_costs(model, space, sensitivity, group_errors)
        info["error_seconds"] = time.perf_counter() - start
        return cost_table_from_groups(space, costs, meta={**info, **dict(meta or {})})
    if sensitivity.unit_costs is not None:
        per_unit = {n: dict(c) for n, c in sensitivity.unit_costs.items()}
    else:
        errors = quantization_errors(model, space) if unit_errors is None else unit_errors
        per_unit = {n: {b: sensitivity.scores[n] * e for b, e in errors[n].items()} for n in space.names}
    info = {"estimator": sensitivity.method, "estimator_seconds": sensitivity.seconds, "error": error,
            "error_seconds": time.perf_counter() - start}
    info.update(meta or {})
    return cost_table_from_space(space, per_unit, meta=info)
