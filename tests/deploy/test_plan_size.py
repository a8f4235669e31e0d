"""Average bits mean one thing everywhere (mpsearch/deploy/evaluate.plan_size, CostTable.average_bits)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import plan_size
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover
from mpsearch.zoo import load_pretrained


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return load_pretrained("resnet20")


def test_raising_one_units_width_never_lowers_the_average(resnet: nn.Module) -> None:
    names = [u.name for u in discover(resnet).units]
    base = {n: 4 for n in names}
    for name in names:
        previous_bits = previous_bytes = -1.0
        for width in (2, 3, 4, 8, 16):  # 16: kept in floating point, counted at 16 bits
            size = plan_size(resnet, BitPlan(bits={**base, name: width}, quantizer=RECOMMENDED))
            assert size.average_bits > previous_bits, (name, width)
            assert size.total_bytes > previous_bytes, (name, width)
            previous_bits, previous_bytes = size.average_bits, size.total_bytes


def test_a_float_unit_counts_at_16_bits_over_all_searched_weights(resnet: nn.Module) -> None:
    space = discover(resnet)
    bits = {u.name: 4 for u in space.units}
    four = plan_size(resnet, BitPlan(bits=bits, quantizer=RECOMMENDED))
    unit = space.unit("layer1.0.conv1")
    one_float = plan_size(resnet, BitPlan(bits={**bits, unit.name: 16}, quantizer=RECOMMENDED))
    expected = (four.code_bits + four.overhead_bits - unit.n_weights * 4 - unit.out_features * 24
                + 16 * unit.n_weights) / space.n_weights
    assert one_float.searched_weights == four.searched_weights == space.n_weights
    assert one_float.average_bits == pytest.approx(expected, rel=1e-12)
    assert one_float.average_bits > four.average_bits  # it used to fall (4.0776 < 4.0784) while KiB rose


def test_plan_average_equals_the_cost_tables(resnet: nn.Module) -> None:
    space = discover(resnet)
    costs = cost_table_from_space(space, {u.name: {b: 1.0 / b for b in u.bits} for u in space.units})
    rng = np.random.default_rng(0)
    for _ in range(5):
        choice = np.array([rng.choice(np.flatnonzero(row)) for row in costs.allowed])
        plan = costs.plan(choice)
        assert plan_size(resnet, plan).average_bits == pytest.approx(costs.average_bits(choice), rel=1e-12)


def test_units_left_out_of_the_search_are_not_averaged() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    space = discover(model, exclude=["2"], pin_first_last=None, quantizer=QuantizerConfig(scheme="affine"))
    costs = cost_table_from_space(space, {"0": {b: 1.0 for b in space.unit("0").bits}})
    choice = costs.uniform_choice(3)
    size = plan_size(model, costs.plan(choice))
    assert size.searched_weights == 64 * 32
    assert size.average_bits == pytest.approx(costs.average_bits(choice)) == pytest.approx(3 + 24 / 64)


def test_per_group_widths_count_each_group() -> None:
    model = nn.Sequential(nn.Linear(8, 2))
    q = QuantizerConfig(scheme="affine", group_size=4)  # 2 rows x 2 groups of 4
    size = plan_size(model, BitPlan(bits={"0": [2, 4, 8, 16]}, quantizer=q))
    assert size.average_bits == pytest.approx(((2 + 4 + 8 + 16) * 4 + 3 * 24) / 16)
