"""Roofline sanity: units, monotonicity, precision fallback, one layer by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.errors import UnknownNameError
from mpsearch.hardware_models.devices import DEVICES, cpu_local, get_device
from mpsearch.hardware_models.roofline import layer_latency_ms, model_latency_ms


def test_one_layer_by_hand_compute_bound():
    # A100, 4096x4096 linear, 8-bit weights and activations, 512 tokens: compute bound at int8
    ms = layer_latency_ms("a100-80gb", macs=4096 * 4096, rows=1, out_features=4096, fan_in=4096,
                          bits=8, act_bits=8, batch=512)
    compute = 2 * 4096 * 4096 * 512 / 624e12
    memory = (4096 * 4096 + 4096 * 2 + 512 * 8192) / 2039e9
    assert compute > memory
    assert float(ms) == pytest.approx(compute * 1e3)


def test_one_layer_by_hand_memory_bound():
    ms = layer_latency_ms("t4", macs=4096 * 4096, rows=1, out_features=4096, fan_in=4096, bits=4)
    assert float(ms) == pytest.approx((4096 * 2048 + 4096 * 2 + 2 * 8192) / 320e9 * 1e3)


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_monotone_in_bits_and_batch(device, resnet20_shapes):
    s = resnet20_shapes
    by_bits = [model_latency_ms(s, {n: b for n in s.names}, device) for b in (2, 3, 4, 8, 16)]
    assert all(np.diff(by_bits) >= 0) and by_bits[0] < by_bits[-1]
    by_batch = [model_latency_ms(s, {n: 4 for n in s.names}, device, batch=b) for b in (1, 8, 64)]
    assert all(np.diff(by_batch) > 0)
    assert 1e-4 < by_bits[2] < 10  # ms: a ResNet-20 on a GPU is micro- to milliseconds


def test_precision_fallback_and_lookup():
    h100 = get_device("H100")
    assert h100.peak_ops("int4") == h100.peak_ops("int8") == 1979e12
    cpu = cpu_local(peak_gflops=100.0, bandwidth_gbs=10.0)
    assert cpu.peak_ops("int8") == cpu.peak_ops("fp32") == 1e11
    with pytest.raises(UnknownNameError, match="known device"):
        get_device("tpu-v9")
