"""plan_from_assignment (mpsearch/core/plan_build.py): patterns -> a complete plan, typos refused."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BitsOutOfRangeError, PlanMismatchError
from mpsearch.core.plan_build import plan_from_assignment

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
         "model.layers.1.mlp.up_proj", "lm_head"]


def test_later_patterns_override_and_the_rest_get_the_default() -> None:
    plan = plan_from_assignment(NAMES, {"model.layers.*.mlp.*": 4, "*.down_proj": 3})
    assert dict(plan.bits) == {"lm_head": 16, "model.layers.0.mlp.down_proj": 3, "model.layers.0.mlp.up_proj": 4,
                               "model.layers.0.self_attn.q_proj": 16, "model.layers.1.mlp.up_proj": 4}
    assert plan_from_assignment(NAMES, {"*": 8, "lm_head": 16}, default=None).bits["lm_head"] == 16


def test_typos_and_bad_widths_are_refused_with_the_fix() -> None:
    with pytest.raises(PlanMismatchError, match=r"every pattern must match a unit, but 'model.layer.\*' matches none"):
        plan_from_assignment(NAMES, {"model.layer.*": 4})
    with pytest.raises(PlanMismatchError, match=r"default=None every unit needs a pattern, but 1 match none: \['lm_head'\]"):
        plan_from_assignment(NAMES, {"model.*": 4}, default=None)
    with pytest.raises(BitsOutOfRangeError, match="within 1..8"):
        plan_from_assignment(NAMES, {"lm_head": 9})


def test_a_cost_table_gives_its_pins_quantizer_and_float_units() -> None:
    q = QuantizerConfig(scheme="affine", group_size=32)
    allowed = np.ones((3, 2), bool)
    allowed[0] = [False, True]  # pinned at 8
    costs = CostTable(items=("a", "b", "c"), bits=(4, 8), cost=np.ones((3, 2)), storage_bits=np.ones((3, 2)),
                      n_weights=np.ones(3, int), allowed=allowed, ties=((1, 2),), quantizer=q.to_dict(),
                      meta={"float_units": ["skipped"]})
    plan = plan_from_assignment(costs, {"[bc]": 4})
    assert dict(plan.bits) == {"a": 8, "b": 4, "c": 4, "skipped": 16} and plan.quantizer == q
    assert plan.pins == {"a": 8, "skipped": 16}
    with pytest.raises(PlanMismatchError, match=r"pinned units keep their pin, but the assignment moves \['a'\]"):
        plan_from_assignment(costs, {"a": 4, "[bc]": 4})
    with pytest.raises(PlanMismatchError, match=r"tied units must share a width, but \['b', 'c'\] get \[4, 8\]"):
        plan_from_assignment(costs, {"b": 4, "c": 8})
