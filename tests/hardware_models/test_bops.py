"""BOPs of ResNet-20 against a hand count of its layers."""

from __future__ import annotations

import numpy as np

from mpsearch.hardware_models.bops import bops_column, model_bops
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover


def _resnet20_macs_by_hand() -> int:
    conv1 = 32 * 32 * 16 * 3 * 3 * 3  # 3 -> 16 channels at 32x32
    stage1 = 6 * (32 * 32 * 16 * 16 * 9)  # 3 blocks x 2 convs, 16 -> 16 at 32x32
    stage2 = 16 * 16 * 32 * 16 * 9 + 5 * (16 * 16 * 32 * 32 * 9)  # first conv 16 -> 32, stride 2 to 16x16
    stage3 = 8 * 8 * 64 * 32 * 9 + 5 * (8 * 8 * 64 * 64 * 9)  # first conv 32 -> 64 at 8x8
    linear = 64 * 10
    return conv1 + stage1 + stage2 + stage3 + linear  # shortcuts are parameter-free padding


def test_resnet20_bops_at_8_8_match_the_hand_count(resnet20_shapes):
    hand = _resnet20_macs_by_hand()
    assert hand == 40_551_040
    assert model_bops(resnet20_shapes, {n: 8 for n in resnet20_shapes.names}, act_bits=8) == hand * 64


def test_bops_column_scales_with_bits_and_batch(resnet20, resnet20_shapes):
    space = discover(resnet20)
    costs = cost_table_from_space(space, {u.name: {b: 1.0 for b in u.bits} for u in space.units})
    col = bops_column(costs, resnet20_shapes, act_bits=8, batch=4)
    i = costs.items.index("layer1.0.conv1")
    for j, b in enumerate(costs.bits):
        assert col[i, j] == 32 * 32 * 16 * 16 * 9 * b * 8 * 4
    assert np.all(np.diff(col[i]) > 0)
