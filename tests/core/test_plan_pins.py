"""Plans keep the search space's pins (mpsearch/core/plan.py, CostTable.plan)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import BitsOutOfRangeError, PlanFormatError
from mpsearch.core.plan import BitPlan
from mpsearch.pricing.tables import cost_table_from_groups, cost_table_from_space
from mpsearch.space.discover import discover


def model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def table(space):
    return cost_table_from_space(space, {u.name: {b: 2.0 ** -b for b in u.bits} for u in space.units})


def test_a_solved_plan_records_the_pins_and_keeps_them_through_json() -> None:
    costs = table(discover(model()))  # first conv and classifier pinned at 8
    plan = costs.plan(costs.uniform_choice(2))
    assert costs.pins() == {"0": 8, "4": 8}
    assert plan.pins == {"0": 8, "4": 8} and plan.bits == {"0": 8, "2": 2, "4": 8}
    assert json.loads(plan.to_json())["pins"] == {"0": 8, "4": 8}
    assert BitPlan.from_json(plan.to_json()) == plan


def test_a_plan_moving_a_pinned_unit_is_refused_naming_unit_bits_and_pin() -> None:
    costs = table(discover(model()))
    doc = json.loads(costs.plan(costs.uniform_choice(4)).to_json())
    doc["bits"]["0"] = 2  # the edit a user made by hand
    with pytest.raises(BitsOutOfRangeError, match=r"pinned by the search space must keep its pinned width, but the plan "
                       r"gives '0' 2 bits and it is pinned at 8\. Set it back to 8"):
        BitPlan.from_dict(doc)
    with pytest.raises(BitsOutOfRangeError, match=r"gives '4' 16 bits and it is pinned at 8"):
        BitPlan(bits={"0": 8, "2": 4, "4": 16}, pins={"0": 8, "4": 8})


def test_units_left_out_of_the_search_are_pinned_at_16() -> None:
    space = discover(model(), exclude=["4"], pin_first_last=None)
    costs = table(space)
    plan = costs.plan(costs.uniform_choice(3))
    assert plan.pins == {"4": 16} and plan.unsearched == ("4",)
    with pytest.raises(BitsOutOfRangeError,
                       match=r"left out of the search stays in floating point \(16 bits\), but the plan gives '4' 3 bits"):
        BitPlan(bits={"0": 3, "2": 3, "4": 3}, pins=plan.pins)


def test_group_plans_record_pins_per_unit() -> None:
    space = discover(model(), quantizer=QuantizerConfig(scheme="affine", group_size=9))
    counts = {u.name: u.out_features * -(-u.fan_in // 9) for u in space.units}
    bits = (2, 3, 4, 8)
    group_costs = {n: np.where([b in space.unit(n).bits for b in bits], 1.0, np.nan)[None, :].repeat(c, 0)
                   for n, c in counts.items()}
    costs = cost_table_from_groups(space, group_costs)
    assert costs.pins() == {"0": 8, "4": 8}
    plan = costs.plan(costs.uniform_choice(2))
    assert plan.pins == {"0": 8, "4": 8}


def test_pins_must_name_plan_units_with_valid_widths() -> None:
    with pytest.raises(PlanFormatError, match=r"`pins` must name units of the plan, but got 'x'"):
        BitPlan(bits={"a": 4}, pins={"x": 8})
    with pytest.raises(BitsOutOfRangeError, match=r"pins\['a'\]"):
        BitPlan(bits={"a": 4}, pins={"a": 9})
    with pytest.raises(PlanFormatError, match=r"`pins` must map unit names to bit widths"):
        BitPlan(bits={"a": 4}, pins=[("a", 4)])


def test_plans_without_pins_read_and_write_as_before() -> None:
    plan = BitPlan(bits={"a": 4})
    assert "pins" not in json.loads(plan.to_json())
    assert plan.pins == {} and plan.unsearched == ()
