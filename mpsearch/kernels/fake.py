"""Fake quantization of a whole model: weights replaced by Q_b(W), still in floating point.

This is how estimators and evaluations see a plan's effect without packing anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from mpsearch.core.errors import PlanMismatchError
from mpsearch.kernels.quantize import (
    FLOAT_BITS,
    QuantizerConfig,
    check_bits,
    check_group_bits,
    fake_quantize,
    fake_quantize_groups,
    matrix_to_weight,
    weight_matrix,
)

BitSpec = int | Tensor | np.ndarray


def quantizable_kind(module: nn.Module) -> str | None:
    """The weight layout of a quantizable module, or None.

    "conv2d" for ``nn.Conv2d``, "linear" for ``nn.Linear``, "conv1d" for transformers' ``Conv1D``
    (recognized by its class name, 2-D weight and ``nf`` attribute, without importing
    transformers).

    >>> quantizable_kind(nn.Linear(3, 2)), quantizable_kind(nn.ReLU())
    ('linear', None)
    """
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.Linear):
        return "linear"
    weight = getattr(module, "weight", None)
    if (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(weight, Tensor) and weight.dim() == 2):
        return "conv1d"
    return None


def _listed(names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def _check_plan(model: nn.Module, bits_by_unit: Mapping[str, BitSpec],
                config: QuantizerConfig) -> dict[str, BitSpec]:
    """Validate every entry before any weight changes; return normalized specs by name."""
    modules = dict(model.named_modules())
    unknown = [n for n in bits_by_unit if n not in modules]
    if unknown:
        known = [n for n, m in modules.items() if quantizable_kind(m) is not None]
        raise PlanMismatchError(
            f"Every unit must name a module of the model, but {len(unknown)} do not: "
            f"{_listed(unknown)}. Use names from model.named_modules(); quantizable ones are "
            f"{_listed(known, 5)}."
        )
    wrong = [f"{n} ({type(modules[n]).__name__})" for n in bits_by_unit
             if quantizable_kind(modules[n]) is None]
    if wrong:
        raise PlanMismatchError(
            f"Only Conv2d, Linear and transformers Conv1D modules can be quantized, but the plan "
            f"names {_listed(wrong)}. Remove them from the plan or name their submodules."
        )
    specs: dict[str, BitSpec] = {}
    owners: dict[int, tuple[str, BitSpec]] = {}  # tied weights must get the same bits
    for name, spec in bits_by_unit.items():
        weight = modules[name].weight
        if isinstance(spec, (Tensor, np.ndarray)):
            out, fan_in = weight_matrix(weight, quantizable_kind(modules[name])).shape
            spec = check_group_bits(spec, out, fan_in, config)
        else:
            spec = check_bits(spec, config.scheme, allow_float=True)
        first = owners.setdefault(id(weight), (name, spec))
        if first[0] != name and not _same_spec(first[1], spec):
            raise PlanMismatchError(
                f"Units that share one weight tensor must get the same bits, but {first[0]!r} "
                f"and {name!r} differ. Give tied units equal bits (tie them in the search space)."
            )
        specs[name] = spec
    return specs


def _same_spec(a: BitSpec, b: BitSpec) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.equal(a, b)
    return not isinstance(a, Tensor) and not isinstance(b, Tensor) and a == b


@torch.no_grad()
def fake_quantize_model(model: nn.Module, bits_by_unit: Mapping[str, BitSpec],
                        config: QuantizerConfig | None = None,
                        inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (the model itself if ``inplace``) with the named weights fake-quantized.

    ``bits_by_unit`` maps exact module names to an int width (whole unit; 16 leaves it in
    floating point) or to an (out, n_groups) integer tensor of per-group widths. Everything is
    validated before any weight changes.

    >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> q = fake_quantize_model(net, {"0": 4, "2": 16})
    >>> torch.equal(q[2].weight, net[2].weight), torch.equal(q[0].weight, net[0].weight)
    (True, False)
    """
    config = config or QuantizerConfig()
    specs = _check_plan(model, bits_by_unit, config)
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    done: set[int] = set()
    for name, spec in specs.items():
        module = modules[name]
        weight = module.weight
        if id(weight) in done or (isinstance(spec, int) and spec == FLOAT_BITS):
            continue
        done.add(id(weight))
        kind = quantizable_kind(module)
        mat = weight_matrix(weight.detach(), kind)
        if isinstance(spec, Tensor):
            new = fake_quantize_groups(mat, spec, config)
        else:
            new = fake_quantize(mat, spec, config)
        weight.copy_(matrix_to_weight(new, weight.shape, kind))
    return target


__all__ = ["fake_quantize_model", "quantizable_kind"]
