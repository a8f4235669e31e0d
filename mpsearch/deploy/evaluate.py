"""Applying a plan (fake-quant reference) and measuring what it does to a model.

A unit whose weight other modules read too (``lm_head`` tied to ``model.embed_tokens``) is
quantized once, so every reader sees the same values; a token-embedding unit is quantized per
row of its table (one output channel per row, groups along the hidden dimension), the layout of
a tied ``lm_head``, so one set of codes serves both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpsearch.core.config import FLOAT_BITS, group_sizes
from mpsearch.core.errors import ConfigError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.bias_shift import add_bias_correction
from mpsearch.deploy.embedding import check_table_activations, without_tables
from mpsearch.deploy.gptq import gptq_quantize_model
from mpsearch.kernels.fake import fake_quantize_model as _fake_quantize_units
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.kernels.quantize import (
    check_bits,
    check_group_bits,
    fake_quantize,
    fake_quantize_groups,
    overhead_bits,
    weight_matrix,
)
from mpsearch.space.discover import check_plan_for_model


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, fan_in) of a quantizable module's weight, as the quantizer sees it (an
    embedding table: one row per output channel)."""
    if isinstance(module, nn.Embedding):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    out_f, fan_in = weight_matrix(module.weight, quantizable_kind(module)).shape
    return int(out_f), int(fan_in)


def fake_quantize_model(model: nn.Module, plan: BitPlan, *, inplace: bool = False,
                        batches: Iterable[Any] | Any | None = None) -> nn.Module:
    """A copy of ``model`` with every unit's weight replaced by its quantized values under ``plan``,
    and each unit's input quantized where the plan sets activation bits (forward pre-hooks);
    the plan's bias corrections are added to the units' biases.

    A plan with ``quantizer.method == "gptq"`` is quantized by sequential GPTQ
    (:mod:`mpsearch.deploy.gptq`), which needs the calibration ``batches`` (an iterable of
    batches or a ``Calibration``); round-to-nearest plans ignore them.
    The plan is validated against the model first (unknown, missing or non-quantizable
    units raise :class:`~mpsearch.core.errors.PlanMismatchError`).
    """
    check_plan_for_model(plan, model)
    check_table_activations(model, plan)
    specs = unit_bit_specs(model, plan)
    tables = _embedding_specs(model, specs, plan)
    if plan.quantizer.method == "gptq":
        if batches is None:
            raise ConfigError("A plan with quantizer method='gptq' is reproduced from calibration data, "
                              "but got batches=None. Pass fake_quantize_model(model, plan, batches=...) "
                              "the calibration batches the plan was made with.")
        quantized = gptq_quantize_model(model, without_tables(model, plan), batches, inplace=inplace)
    else:
        layers = {n: s for n, s in specs.items() if not _is_table(model, n)}
        quantized = _fake_quantize_units(model, layers, plan.quantizer, inplace=inplace)
        for name, spec in tables.items():
            weight = quantized.get_submodule(name).weight
            mat = weight.detach()
            new = fake_quantize_groups(mat, spec, plan.quantizer) if isinstance(spec, torch.Tensor) \
                else fake_quantize(mat, spec, plan.quantizer)
            with torch.no_grad():
                weight.copy_(new)
    if plan.activation_bits:
        from mpsearch.kernels.activations import attach_activation_quant

        attach_activation_quant(quantized, plan.activation_bits, plan.activation_ranges)
    if plan.bias_correction:
        add_bias_correction(quantized, plan.bias_correction)
    return quantized


def _is_table(model: nn.Module, name: str) -> bool:
    return isinstance(model.get_submodule(name), nn.Embedding)


def _embedding_specs(model: nn.Module, specs: dict, plan: BitPlan) -> dict:
    """The validated widths of the plan's embedding units below 16 bits (checked before any weight changes)."""
    out = {}
    for name, spec in specs.items():
        if not _is_table(model, name):
            continue
        if isinstance(spec, torch.Tensor):
            rows, dim = model.get_submodule(name).weight.shape
            out[name] = check_group_bits(spec, int(rows), int(dim), plan.quantizer)
        elif check_bits(spec, plan.quantizer.scheme, allow_float=True) != FLOAT_BITS:
            out[name] = spec
    return out


def unit_bit_specs(model: nn.Module, plan: BitPlan) -> dict:
    """Plan bits as the reference quantizer takes them: an int, or an (out, n_blocks) tensor per group."""
    modules = dict(model.named_modules())
    specs = {}
    for name, value in plan.bits.items():
        if isinstance(value, tuple):
            specs[name] = torch.from_numpy(plan.group_widths(name, _matrix_shape(modules[name])[0]))
        else:
            specs[name] = value
    return specs


@dataclass(frozen=True)
class PlanSize:
    """Storage of a plan's units and of the rest of the model.

    The searched weights are those of every unit the plan names, except units left out of the
    search (pinned at 16 bits). Average bits count each searched weight at its width, a unit
    left at 16 bits at 16 with no scale, plus scales and zero-points, over all searched weights,
    so raising any unit's width never lowers the average. For a plan solved from a cost table it
    equals :meth:`~mpsearch.core.costs.CostTable.average_bits` of the plan's choice.
    """

    quantized_weights: int  # weights of searched units below 16 bits (a 16-bit group of such a unit included)
    code_bits: int  # bits of their integer codes (16 per weight of a 16-bit group)
    overhead_bits: int  # bits of their scales and zero-points
    float_bytes: int  # every other parameter and buffer, in their own dtype
    float_weights: int = 0  # weights of searched units left at 16 bits (kept in float)

    @property
    def quantized_bytes(self) -> float:
        return (self.code_bits + self.overhead_bits) / 8

    @property
    def searched_weights(self) -> int:
        return self.quantized_weights + self.float_weights

    @property
    def average_bits(self) -> float:
        """Stored bits per searched weight: codes, scales and zero-points, 16 for a float one."""
        return (self.code_bits + self.overhead_bits + FLOAT_BITS * self.float_weights) / max(self.searched_weights, 1)

    @property
    def total_bytes(self) -> float:
        return self.quantized_bytes + self.float_bytes


def plan_size(model: nn.Module, plan: BitPlan) -> PlanSize:
    """Bytes of ``model`` stored under ``plan``: codes, scale overhead, and the parameters left in float."""
    check_plan_for_model(plan, model)
    modules = dict(model.named_modules())
    quantized_ids = set()
    weights = floats = codes = overhead = 0
    for name, bits in plan.bits.items():
        module = modules[name]
        out_f, fan_in = _matrix_shape(module)
        if name in plan.unsearched:
            continue
        if bits == FLOAT_BITS:
            floats += out_f * fan_in
            continue
        quantized_ids.add(id(module.weight))
        if isinstance(bits, tuple):  # per group: blocks of G inputs, the last one maybe partial
            sizes = group_sizes(fan_in, plan.quantizer)
            for k, b in enumerate(bits):  # a group at 16 bits is stored in the unit as 16-bit floats
                n = int(sizes[k % len(sizes)])
                weights += n
                codes += n * b
                overhead += overhead_bits(1, plan.quantizer.group_size, b, plan.quantizer)
            continue
        weights += out_f * fan_in
        codes += out_f * fan_in * bits
        overhead += overhead_bits(out_f, fan_in, bits, plan.quantizer)
    float_bytes = sum(
        t.numel() * t.element_size()
        for t in list(model.parameters()) + list(model.buffers())
        if id(t) not in quantized_ids
    )
    return PlanSize(quantized_weights=weights, code_bits=codes, overhead_bits=overhead, float_bytes=float_bytes,
                    float_weights=floats)


def evaluate_plan(model: nn.Module, plan: BitPlan, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500,
                  batches: Iterable[Any] | Any | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` under ``plan`` (fake-quant reference; ``batches``:
    the calibration data a GPTQ plan needs)."""
    from mpsearch.zoo.eval import accuracy

    return accuracy(fake_quantize_model(model, plan, batches=batches), images, labels, batch_size=batch_size)
