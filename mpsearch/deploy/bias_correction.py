"""Bias correction: undo the mean output shift that quantizing a unit's weight causes.

Rounding a weight matrix W to W_q changes each output channel c by
(W_q - W)[c] . x, whose mean over calibration inputs is usually not zero: the
quantization error of a row does not cancel against the mean of its inputs. The
next layers then see shifted activations, and batch norm, folded into the weights,
cannot re-center them. Subtracting the measured mean shift from the unit's bias
removes that systematic part of the error at no run-time cost (the "empirical bias
correction" of Nagel et al., *Data-Free Quantization Through Weight Equalization and
Bias Correction*, ICCV 2019).

:func:`measure_bias_correction` runs the fake-quantized model (with the plan's
activation quantization) over calibration batches once; at each quantized unit it
feeds the same input to the unit's full-precision twin, and records minus the mean
difference per output channel (over batch and spatial positions; over real tokens
only for tokenizer batches). The result goes into the plan
(:meth:`BitPlan.with_bias_correction`), so the fake-quant model, the packed model and
an exported model all carry it.

>>> import torch
>>> from mpsearch.core.plan import BitPlan
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> plan = BitPlan(bits={"0": 2, "2": 16})
>>> corrections = measure_bias_correction(net, plan, [torch.randn(64, 16)])
>>> sorted(corrections), len(corrections["0"])
(['0'], 8)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mpsearch.core.config import FLOAT_BITS
from mpsearch.core.errors import DataError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.bias_shift import add_bias_correction
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.space.forward import batch_inputs, channel_sums, token_mask
from mpsearch.space.hooks import ModelHooks


def measure_bias_correction(model: nn.Module, plan: BitPlan, batches: Iterable[Any] | Any) -> dict[str, list[float]]:
    """Per quantized unit of ``plan``, minus its mean output shift (one value per output channel).

    ``batches`` is a :class:`~mpsearch.sensitivity.Calibration` or an iterable of batches
    (input tensors, ``(inputs, labels)`` pairs, or tokenizer mappings). ``model`` is left
    unchanged; any correction already in ``plan`` is ignored (measured afresh).
    """
    batches = list(getattr(batches, "batches", batches))
    if not batches:
        raise DataError("bias correction needs at least one calibration batch, but got none. Pass some samples.")
    base = dataclasses.replace(plan, bias_correction={})
    gptq = base.quantizer.method == "gptq"  # GPTQ calibrates on the same batches
    quantized = fake_quantize_model(model, base, batches=batches if gptq else None)
    reference = dict(model.named_modules())
    units = {n: m for n, m in quantized.named_modules()
             if n in plan.bits and plan.bits[n] != FLOAT_BITS and quantizable_kind(m) is not None}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    current: dict[str, Any] = {"mask": None}

    def hook(name: str, module: nn.Module):
        kind = quantizable_kind(module)

        def record(mod, inputs, output):
            delta = output - reference[name](*inputs)
            total, n = channel_sums(delta.detach().double(), kind, current["mask"])
            sums[name] = sums.get(name, 0) + total
            counts[name] = counts.get(name, 0.0) + n
        return record

    with ModelHooks(quantized) as hooks, torch.inference_mode():
        for n, m in units.items():
            hooks.forward(m, hook(n, m))
        for batch in batches:
            args, kwargs = batch_inputs(batch)
            current["mask"] = token_mask(batch)
            quantized(*args, **kwargs)
    return {n: [-float(v) for v in (sums[n] / max(counts[n], 1.0)).tolist()] for n in sorted(sums)}


__all__ = ["add_bias_correction", "measure_bias_correction"]
