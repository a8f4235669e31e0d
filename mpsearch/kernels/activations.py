"""Activation quantization: per-tensor input ranges, calibrated, then fake-quantized by hooks.

Each quantized unit's *input* is quantized per tensor, affine, to ``bits`` over a
calibrated range ``[lo, hi]`` (0 always inside it, so zero stays exact; post-ReLU
inputs get ``lo = 0`` and use every code for positive values). Ranges are measured
once on calibration data (real or distilled) and stored in the plan, so a plan
reproduces the same model everywhere.

>>> # ranges = calibrate_ranges(model, batches, ["layer1.0.conv1", ...])
>>> # handles = attach_activation_quant(model, {"layer1.0.conv1": 8}, ranges)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from mpsearch.core.errors import DataError, PlanMismatchError
from mpsearch.kernels._hooks import ModelHooks


def quantize_tensor(x: torch.Tensor, bits: int, lo: float, hi: float) -> torch.Tensor:
    """Affine per-tensor fake quantization of ``x`` to ``bits`` over ``[lo, hi]`` (0 included)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero = round(-lo / scale)
    codes = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (codes - zero) * scale


def calibrate_ranges(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    units: Sequence[str],
    *,
    percentile: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Min/max (or a symmetric percentile) of each unit's input over the calibration batches.

    ``percentile`` (e.g. 99.99) clips outliers: the range becomes the percentile of the
    values instead of their extremes.
    """
    modules = dict(model.named_modules())
    missing = [u for u in units if u not in modules]
    if missing:
        raise PlanMismatchError(f"activation units must be modules of the model, but {missing} are not.")
    if percentile is not None and not 50 < percentile <= 100:
        raise DataError(f"`percentile` must be within (50, 100], but got {percentile!r}.")
    seen: dict[str, list[float]] = {u: [float("inf"), float("-inf")] for u in units}

    def hook(name: str):
        def record(_module, inputs):
            x = inputs[0].detach().float()
            if percentile is None:
                lo, hi = float(x.min()), float(x.max())
            else:
                flat = x.flatten()
                if flat.numel() > 1_000_000:  # quantile on a fixed, evenly spaced subsample
                    flat = flat[:: flat.numel() // 1_000_000 + 1]
                lo = float(torch.quantile(flat, 1 - percentile / 100))
                hi = float(torch.quantile(flat, percentile / 100))
            seen[name][0] = min(seen[name][0], lo)
            seen[name][1] = max(seen[name][1], hi)

        return record

    n = 0
    with ModelHooks(model) as hooks, torch.inference_mode():
        for u in units:
            hooks.pre(modules[u], hook(u))
        for batch in batches:
            model(batch)
            n += 1
    if n == 0:
        raise DataError("activation calibration needs at least one batch, but got none. Pass calibration inputs.")
    return {u: (min(lo, 0.0), max(hi, 0.0)) for u, (lo, hi) in seen.items()}


def attach_activation_quant(
    model: nn.Module, bits: Mapping[str, int], ranges: Mapping[str, Sequence[float]]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Quantize each named unit's input on the fly; returns the hook handles (``.remove()`` undoes it)."""
    modules = dict(model.named_modules())
    missing = sorted(set(bits) - set(ranges))
    unknown = sorted(u for u in bits if u not in modules)
    if missing or unknown:
        raise PlanMismatchError(
            f"activation bits need a calibrated range and a module, but ranges are missing for {missing} "
            f"and {unknown} are not modules. Calibrate with calibrate_ranges()."
        )
    handles = []
    for name, b in bits.items():
        if b == 16:
            continue
        lo, hi = ranges[name]

        def pre_hook(_module, inputs, b=b, lo=lo, hi=hi):
            return (quantize_tensor(inputs[0], b, lo, hi), *inputs[1:])

        handles.append(modules[name].register_forward_pre_hook(pre_hook))
    return handles
