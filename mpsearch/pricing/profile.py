"""Torch-side profiling: trace a model once to get the arrays the hardware models read.

:func:`trace_layers` runs one forward pass with hooks on every quantizable unit (``nn.Conv2d``,
``nn.Linear``, transformers' ``Conv1D``) and records its (out, K) weight matrix, MACs per
sample and GEMM rows per sample; :func:`memory_inventory` lists what a model stores besides
its quantizable weights. Both return plain-array objects from :mod:`mpsearch.hardware_models`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.hardware_models.memory import MemoryInventory
from mpsearch.hardware_models.shapes import LayerShapes
from mpsearch.kernels.fake import quantizable_kind
from mpsearch.space.hooks import ModelHooks


def _units(model: nn.Module, names: Iterable[str] | None) -> list[tuple[str, str, nn.Module]]:
    wanted = None if names is None else set(names)
    found = [(n, k, m) for n, m in model.named_modules()
             if n and (k := quantizable_kind(m)) is not None and (wanted is None or n in wanted)]
    if wanted is not None and len(found) != len(wanted):
        missing = sorted(wanted - {n for n, _, _ in found})
        raise DataError(f"every name must be a quantizable unit of the model, but {missing[:5]} are not.")
    return found


def _geometry(kind: str, module: nn.Module) -> tuple[int, int]:
    shape = module.weight.shape
    if kind == "conv1d":
        return int(shape[1]), int(shape[0])
    return int(shape[0]), int(module.weight[0].numel())


def trace_layers(model: nn.Module, *inputs: Any, names: Iterable[str] | None = None,
                 **kwargs: Any) -> LayerShapes:
    """Run ``model(*inputs, **kwargs)`` once, in eval mode, and record each unit's work per sample.

    The batch size is the first dimension of the first tensor input. Conv MACs per sample are
    ``out_h * out_w * out_ch * (in_ch / groups) * kh * kw`` with ``rows = out_h * out_w``;
    linear and Conv1D MACs are ``out * in`` per token with ``rows`` = tokens per sample. A unit
    called several times adds up. Units never called get zero MACs.

    >>> from mpsearch.zoo import cifar_resnet
    >>> s = trace_layers(cifar_resnet(20), torch.zeros(1, 3, 32, 32))
    >>> int(s.macs[0]), int(s.rows[0])  # conv1: 32*32*16*3*3*3
    (442368, 1024)
    """
    first = next((x for x in list(inputs) + list(kwargs.values()) if isinstance(x, torch.Tensor)), None)
    if first is None or first.dim() == 0:
        raise DataError("trace_layers needs a sample tensor input with a batch dimension, but got none. "
                        "Pass e.g. torch.zeros(1, 3, 32, 32).")
    n_samples = int(first.shape[0])
    units = _units(model, names)
    macs = {n: 0.0 for n, _, _ in units}
    rows = {n: 0 for n, _, _ in units}

    def hook(name: str, kind: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            out_f, fan_in = _geometry(kind, module)
            if kind == "conv2d":
                n_rows = int(output.shape[-1] * output.shape[-2])
            else:
                n_rows = int(output.numel() // (out_f * n_samples))
            rows[name] += n_rows
            macs[name] += float(n_rows) * out_f * fan_in  # fan_in = in_ch/groups * kh * kw
        return record

    with ModelHooks(model) as hooks, torch.no_grad():
        for name, kind, module in units:
            hooks.forward(module, hook(name, kind))
        model(*inputs, **kwargs)
    geo = [_geometry(k, m) for _, k, m in units]
    return LayerShapes(names=tuple(n for n, _, _ in units), out_features=[g[0] for g in geo],
                       fan_in=[g[1] for g in geo], macs=[macs[n] for n, _, _ in units],
                       rows=[rows[n] for n, _, _ in units], kinds=tuple(k for _, k, _ in units), meta={"sample_shape": list(first.shape)})


def memory_inventory(model: nn.Module, names: Iterable[str] | None = None) -> MemoryInventory:
    """The quantizable units' geometry, biases, and the bytes of every other parameter and buffer."""
    units = _units(model, names)
    skip = set()
    out_f, fan_in, w_size, b_numel, b_size = [], [], [], [], []
    for _, kind, module in units:
        o, k = _geometry(kind, module)
        out_f.append(o)
        fan_in.append(k)
        w_size.append(module.weight.element_size())
        skip.add(id(module.weight))
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            skip.add(id(bias))
            b_numel.append(bias.numel())
            b_size.append(bias.element_size())
        else:
            b_numel.append(0)
            b_size.append(0)
    seen: set[int] = set()
    other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in skip or id(t) in seen:
            continue
        seen.add(id(t))
        other += t.numel() * t.element_size()
    def as_i(v):
        return np.asarray(v, np.int64)
    return MemoryInventory(names=tuple(n for n, _, _ in units), out_features=as_i(out_f), fan_in=as_i(fan_in),
                           weight_itemsize=as_i(w_size), bias_numel=as_i(b_numel), bias_itemsize=as_i(b_size),
                           other_bytes=int(other))
