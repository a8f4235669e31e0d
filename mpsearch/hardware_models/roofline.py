"""Roofline latency: per layer ``max(compute time, bytes moved / bandwidth)``, summed over layers.

Assumptions (written down because a roofline is only as good as them):

* Compute: 2 ops per MAC at the device's dense peak for the precision the layer runs in.
  Weight-only quantization (activations in float, ``act_bits >= 16``) runs at the **fp16** rate:
  low-bit weights are dequantized in registers and multiplied in fp16 (the usual weight-only
  kernels, e.g. for LLM inference). With integer activations (``act_bits <= 8``) the layer runs at
  the **int8** rate, and at the **int4** rate when both weights and activations have <= 4 bits
  (where the device has int4 units; otherwise the next wider rate).
* Memory: the weights are streamed once per call at their *packed* size
  (:func:`~mpsearch.hardware_models.memory.weight_bytes`: codes, scales, zero-points; float
  weights in fp16 at 16 bits), plus the input and output activations (``rows * (K + out)`` per
  sample, 2 bytes each for float activations, 1 byte for <= 8-bit ones).
* No overlap between layers, no launch overhead, caches ignored; peaks are never reached in
  practice, so read the result as a lower bound and compare plans, not absolute times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import DataError
from mpsearch.hardware_models.devices import Device, get_device
from mpsearch.hardware_models.memory import weight_bytes
from mpsearch.hardware_models.shapes import LayerShapes, plan_bits_array

if TYPE_CHECKING:
    from mpsearch.core.costs import CostTable

FLOAT_ACT_BITS = 16


def _precision(w_bits: np.ndarray, act_bits: int) -> np.ndarray:
    """Precision name per width: fp16 (weight-only), int8 or int4."""
    if act_bits >= FLOAT_ACT_BITS:
        return np.full(np.shape(w_bits), "fp16", dtype=object)
    low = (np.asarray(w_bits) <= 4) & (act_bits <= 4)
    return np.where(low, "int4", "int8").astype(object)


def layer_latency_ms(device: Device | str, *, macs: Any, rows: Any, out_features: Any, fan_in: Any,
                     bits: Any, act_bits: int = FLOAT_ACT_BITS, batch: int = 1,
                     quantizer: QuantizerConfig | Mapping[str, Any] | None = None) -> np.ndarray:
    """Roofline latency (ms) of layers, broadcast over the array arguments.

    >>> ms = layer_latency_ms("t4", macs=4096*4096, rows=1, out_features=4096, fan_in=4096, bits=4)
    >>> round(float(ms), 4)  # memory bound: (4096*2048 + 4096*2 + 2*8192) B / 320 GB/s
    0.0263
    """
    dev = get_device(device)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise DataError(f"`batch` must be an integer >= 1, but got batch={batch!r}.")
    b = np.asarray(bits, np.int64)
    macs = np.asarray(macs, np.float64) * batch
    prec = _precision(b, int(act_bits))
    peak = np.vectorize(dev.peak_ops, otypes=[np.float64])(prec) if prec.ndim else dev.peak_ops(str(prec))
    compute_s = 2.0 * macs / peak
    w_bytes = weight_bytes(out_features, fan_in, b, quantizer, float_itemsize=2)
    act_item = 2.0 if act_bits >= FLOAT_ACT_BITS else 1.0
    act_bytes = np.asarray(rows, np.float64) * batch * (np.asarray(fan_in) + np.asarray(out_features)) * act_item
    memory_s = (w_bytes + act_bytes) / dev.bandwidth
    return np.maximum(compute_s, memory_s) * 1e3


def latency_column(costs: CostTable, shapes: LayerShapes, device: Device | str, *, batch: int = 1,
                   act_bits: int = FLOAT_ACT_BITS) -> np.ndarray:
    """Resource column ``latency_ms`` (items x choices) on ``device`` for ``batch`` samples."""
    s = shapes.for_costs(costs)
    bits = np.asarray(costs.bits, np.int64)[None, :]
    def col(a):
        return a[:, None]
    return layer_latency_ms(device, macs=col(s.macs), rows=col(s.rows), out_features=col(s.out_features),
                            fan_in=col(s.fan_in), bits=bits, act_bits=act_bits, batch=batch,
                            quantizer=costs.quantizer)


def model_latency_ms(shapes: LayerShapes, bits: Mapping[str, Any], device: Device | str, *, batch: int = 1,
                     act_bits: int = FLOAT_ACT_BITS,
                     quantizer: QuantizerConfig | Mapping[str, Any] | None = None) -> float:
    """Roofline latency (ms) of the quantizable layers under a plan (absent units: fp16)."""
    b = plan_bits_array(shapes, bits)
    per_layer = layer_latency_ms(device, macs=shapes.macs, rows=shapes.rows, out_features=shapes.out_features,
                                 fan_in=shapes.fan_in, bits=b, act_bits=act_bits, batch=batch, quantizer=quantizer)
    return float(per_layer.sum())
