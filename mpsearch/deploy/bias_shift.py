"""Adding a measured per-channel shift to a unit's bias (the applying half of bias correction).

:mod:`mpsearch.deploy.bias_correction` measures the shift; this module only adds it, so that
fake quantization and the packed modules can apply a plan's corrections without depending on
the measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import PlanMismatchError
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import weight_matrix


def _out_channels(module: nn.Module) -> int:
    """Output channels: packed units say so; float units by their (out, fan_in) weight view."""
    if isinstance(getattr(module, "out_features", None), int):  # nn.Linear, QuantLinear, QuantConv2d
        return int(module.out_features)
    return int(weight_matrix(module.weight, quantizable_kind(module)).shape[0])


def add_bias_correction(model: nn.Module, corrections: Mapping[str, Any]) -> nn.Module:
    """Add each correction to its unit's bias in place (creating a bias where there was none)."""
    modules = dict(model.named_modules())
    missing = sorted(n for n in corrections if n not in modules)
    if missing:
        raise PlanMismatchError(f"bias corrections must name units of the model, but {missing} are not in it.")
    for name, values in corrections.items():
        module = modules[name]
        if len(values) != _out_channels(module):
            raise PlanMismatchError(
                f"a bias correction needs one value per output channel, but {name!r} has {len(values)} "
                f"values and {_out_channels(module)} channels. Re-measure it for this model."
            )
        shift = torch.tensor(list(values), dtype=torch.float32)
        with torch.no_grad():
            if getattr(module, "bias", None) is None:
                module.bias = nn.Parameter(shift, requires_grad=False)
            else:
                module.bias.add_(shift.to(module.bias.dtype))
    return model


__all__ = ["add_bias_correction"]
