"""Hardware models: bytes, BOPs and latency of every (unit, bits), as cost-table resource columns.

Arrays only (numpy), never torch: the geometry they read (:class:`LayerShapes`,
:class:`MemoryInventory`) comes from :mod:`mpsearch.pricing.profile` or is built by hand.

>>> # shapes = mpsearch.pricing.profile.trace_layers(model, torch.zeros(1, 3, 32, 32))
>>> # costs = costs.with_resources(bytes_packed=bytes_packed_column(costs, shapes),
>>> #                              bops=bops_column(costs, shapes),
>>> #                              latency_ms=LUTLatencyModel.from_json("lut.json").latency_column(costs, shapes))
>>> # solve(costs, [Budget(kind="latency_ms", value=5.0), Budget(kind="bytes_packed", value=2e5)])
"""

from __future__ import annotations

from mpsearch.hardware_models.bops import bops_column, model_bops
from mpsearch.hardware_models.devices import DEVICES, Device, cpu_local, get_device
from mpsearch.hardware_models.lut import LUTLatencyModel
from mpsearch.hardware_models.memory import (
    MemoryInventory,
    PlanBytes,
    bytes_packed_column,
    plan_bytes,
    weight_bytes,
)
from mpsearch.hardware_models.roofline import latency_column, layer_latency_ms, model_latency_ms
from mpsearch.hardware_models.shapes import LayerShapes

__all__ = [
    "DEVICES", "Device", "LUTLatencyModel", "LayerShapes", "MemoryInventory", "PlanBytes",
    "bops_column", "bytes_packed_column", "cpu_local", "get_device", "latency_column",
    "layer_latency_ms", "model_bops", "model_latency_ms", "plan_bytes", "weight_bytes",
]
