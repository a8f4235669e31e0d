"""The memory model equals the bytes of the packed buffers, to the byte."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.hardware_models.memory import (
    bytes_packed_column,
    plan_bytes,
    weight_bytes,
)
from mpsearch.kernels.packing import pack
from mpsearch.kernels.quantize import quantize, weight_matrix
from mpsearch.pricing.profile import memory_inventory
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover

CONFIGS = [
    QuantizerConfig(scheme="symmetric"),
    QuantizerConfig(scheme="affine"),
    QuantizerConfig(scheme="affine", group_size=16),
    QuantizerConfig(scheme="symmetric", group_size=64, scale_dtype="float32"),
    QuantizerConfig(scheme="affine", group_size=32, scale_dtype="bfloat16"),
]


def _expected_bytes(model, bits_by_unit, config, cache):
    """Build the packed buffers ourselves (quantize + pack) and add every float leftover."""
    modules = dict(model.named_modules())
    total, quantized = 0, set()
    for name, bits in bits_by_unit.items():
        module = modules[name]
        if bits == 16:
            continue
        key = (name, bits)
        if key not in cache:
            qw = quantize(weight_matrix(module.weight.detach(), "conv2d" if module.weight.dim() == 4 else "linear"),
                          bits, config)
            nbytes = pack(qw.codes, bits).numel() + qw.scale.numel() * qw.scale.element_size()
            if config.scheme.value == "affine":
                nbytes += qw.zero.numel()
            cache[key] = nbytes
        total += cache[key]
        quantized.add(id(module.weight))
        if module.bias is not None:
            total += module.bias.detach().to(torch.float32).numel() * 4
            quantized.add(id(module.bias))
    total += sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                 if id(t) not in quantized)
    return total


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.scheme.value}-{c.group_size}-{c.scale_dtype}")
def test_plan_bytes_equal_built_buffers_over_random_plans(resnet20, config):
    inventory = memory_inventory(resnet20)
    rng = np.random.default_rng(0)
    cache: dict = {}
    choices = [1, 2, 3, 4, 5, 8, 16] if config.scheme.value == "affine" else [2, 3, 4, 6, 8, 16]
    for _ in range(20):
        bits = {n: int(rng.choice(choices)) for n in inventory.names if rng.random() < 0.9}
        expected = _expected_bytes(resnet20, {**{n: 16 for n in inventory.names}, **bits}, config, cache)
        assert plan_bytes(inventory, bits, config).total == expected


def test_bytes_packed_column_counts_row_padding(resnet20, resnet20_shapes):
    space = discover(resnet20, pin_first_last=None, quantizer=QuantizerConfig(scheme="affine"))
    costs = cost_table_from_space(space, {u.name: {b: 1.0 for b in u.bits} for u in space.units})
    col = bytes_packed_column(costs, resnet20_shapes)
    assert col.shape == (costs.n_items, costs.n_choices)
    conv1 = costs.items.index("conv1")  # 16 rows of K=27: 3 bits -> ceil(81/8)=11 bytes a row, + fp16 scale + zero
    assert col[conv1, costs.bits.index(3)] == 16 * 11 + 16 * 3
    assert np.all(col >= costs.storage_bits / 8) and np.any(col > costs.storage_bits / 8)
    assert int(weight_bytes(10, 64, 16)) == 10 * 64 * 4


def test_against_apply_buffers_when_available(resnet20):
    if importlib.util.find_spec("mpsearch.deploy.apply") is None:
        pytest.skip("mpsearch.deploy.apply not written yet")
    from mpsearch.core.plan import BitPlan
    from mpsearch.deploy import apply as apply_mod

    if not hasattr(apply_mod, "quantized_buffer_bytes"):
        pytest.skip("apply has no quantized_buffer_bytes")
    inventory = memory_inventory(resnet20)
    rng = np.random.default_rng(1)
    for config in CONFIGS[:3]:
        for _ in range(3):
            bits = {n: int(rng.choice([2, 3, 4, 8, 16])) for n in inventory.names}
            packed = apply_mod.apply(resnet20, BitPlan(bits=bits, quantizer=config), backend="numba")
            real = apply_mod.quantized_buffer_bytes(packed)
            model = plan_bytes(inventory, bits, config)
            assert (real["packed"], real["scale"], real["zero"]) == (model.packed, model.scale, model.zero)
            assert real["total"] == model.total
