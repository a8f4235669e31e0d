"""Group granularity: compact item index, group cost tables, per-group plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import CostTableError, PlanFormatError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import fake_quantize_model, plan_size
from mpsearch.kernels.quantize import fake_quantize_groups
from mpsearch.pricing.tables import cost_table_from_groups
from mpsearch.space.discover import discover


def test_group_index_names_and_slices():
    idx = GroupIndex(("a", "b"), (3, 2))
    assert len(idx) == 5 and list(idx) == ["a#0", "a#1", "a#2", "b#0", "b#1"]
    assert idx[-1] == "b#1" and idx.unit_slice("b") == slice(3, 5)
    assert idx.unit_of().tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(IndexError):
        idx[5]
    with pytest.raises(CostTableError, match="one count per unit"):
        GroupIndex(("a",), (1, 2))
    with pytest.raises(CostTableError, match="positive group counts"):
        GroupIndex(("a", "b"), (1, 0))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3))


def group_table(model: nn.Module, G: int = 4) -> tuple:
    space = discover(model, pin_first_last=None, bits=(2, 4, 8), quantizer=QuantizerConfig(scheme="affine", group_size=G))
    rng = np.random.default_rng(0)
    costs = {}
    for u in space.units:
        n = u.out_features * -(-u.fan_in // G)
        costs[u.name] = np.sort(rng.random((n, 3)), axis=1)[:, ::-1]
    return space, cost_table_from_groups(space, costs)


def test_group_table_storage_counts_partial_groups_and_overhead():
    space, table = group_table(net(), G=4)
    # unit "0": 4 rows x fan_in 10 -> blocks of 4, 4, 2; unit "2": 3 rows x fan_in 4 -> one block
    assert table.n_items == 4 * 3 + 3 * 1
    assert table.n_weights.tolist()[:3] == [4, 4, 2] and table.n_weights.sum() == 40 + 12
    # 2 bits: codes + fp16 scale + uint8 zero-point per group
    assert table.storage_bits[2, 0] == 2 * 2 + 16 + 8
    uniform = table.uniform_choice(4)
    assert table.average_bits(uniform) == pytest.approx((52 * 4 + 15 * 24) / 52)


def test_group_plan_round_trip_and_apply():
    model = net()
    space, table = group_table(model)
    choice = np.random.default_rng(1).integers(0, 3, table.n_items)
    plan = table.plan(choice)
    assert isinstance(plan.bits["0"], tuple) and len(plan.bits["0"]) == 12
    assert BitPlan.from_json(plan.to_json()) == plan
    plan.validate(space)
    assert (table.choice_of(plan) == choice).all()
    quantized = fake_quantize_model(model, plan)
    widths = torch.from_numpy(plan.group_widths("0", 4))
    expected = fake_quantize_groups(model[0].weight.detach(), widths, plan.quantizer)
    assert torch.equal(quantized[0].weight, expected)
    size = plan_size(model, plan)
    assert size.code_bits == int(table.storage_bits[np.arange(table.n_items), choice].sum()) - size.overhead_bits
    assert size.quantized_bytes * 8 == pytest.approx(table.storage_bits[np.arange(table.n_items), choice].sum())


def test_uniform_group_plan_collapses_to_one_width():
    space, table = group_table(net())
    plan = table.plan(table.uniform_choice(4))
    assert plan.bits == {"0": 4, "2": 4}
    assert (table.choice_of(plan) == table.uniform_choice(4)).all()


def test_group_plan_errors():
    with pytest.raises(PlanFormatError, match="need a quantizer with group_size"):
        BitPlan(bits={"0": [4, 4]})
    space, table = group_table(net())
    bad = BitPlan(bits={"0": [4] * 11, "2": 4}, quantizer=space.quantizer)
    with pytest.raises(PlanMismatchError, match="one width per group"):
        bad.validate(space)
    with pytest.raises(PlanMismatchError, match="12 group widths"):
        table.choice_of(bad)
    with pytest.raises(CostTableError, match="must have shape"):
        cost_table_from_groups(space, {"0": np.zeros((3, 3)), "2": np.zeros((3, 3))})
    layer_space = discover(net(), pin_first_last=None)
    with pytest.raises(CostTableError, match="need a quantizer with group_size"):
        cost_table_from_groups(layer_space, {})


def test_group_table_json_round_trip(tmp_path):
    _, table = group_table(net())
    table.save(tmp_path / "t.json")
    back = CostTable.load(tmp_path / "t.json")
    assert back.items == table.items and np.array_equal(back.cost, table.cost)
    assert np.array_equal(back.storage_bits, table.storage_bits)
