"""The error-weighted group-wise recipe: exact sums, consistent group and layer tables, code-bit budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpsearch.core.config import QuantizerConfig, Scheme
from mpsearch.core.errors import ConfigError, CostTableError
from mpsearch.kernels.quantize import dequantize, quantize
from mpsearch.pricing.recipes import code_budget, error_weighted_costs, input_values, recipe_tables
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly
from mpsearch.space.quant_errors import quantization_group_errors

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder

QUANT = QuantizerConfig(scheme=Scheme.AFFINE, group_size=16)


@pytest.fixture(scope="module")
def setup():
    model = tiny_decoder(seed=2, layers=2)
    space = discover_quietly(model, bits=(2, 3, 4), pin_first_last=None, quantizer=QUANT, exclude=["lm_head"])
    windows = torch.randint(0, 260, (4, 20), generator=torch.Generator().manual_seed(0))
    return model, space, Calibration.causal_lm(windows, batch_size=2)


def test_unit_weights_give_plain_group_errors(setup):
    model, space, _ = setup
    ones = [torch.ones(u.fan_in) for u in space.units]
    groups, units = error_weighted_costs(model, space, ones)
    plain = quantization_group_errors(model, space)
    for u in space.units:
        np.testing.assert_allclose(groups[u.name], plain[u.name], rtol=1e-5, atol=1e-12)
        assert units[u.name][3] == pytest.approx(plain[u.name][:, 1].sum(), rel=1e-6)


def test_weighted_sum_by_hand(setup):
    model, space, _ = setup
    values = [torch.rand(u.out_features, u.fan_in, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
              for i, u in enumerate(space.units)]
    groups, _ = error_weighted_costs(model, space, values)
    unit = space.units[3]
    w = model.get_submodule(unit.name).weight.detach().float()
    d2 = (dequantize(quantize(w, 2, QUANT)) - w).double().square() * values[3]
    row, block = 5, 1  # group index row * n_blocks + block
    n_blocks = unit.fan_in // 16
    assert groups[unit.name][row * n_blocks + block, 0] == pytest.approx(float(d2[row, 16:32].sum()), rel=1e-5)


def test_tables_agree_and_budget(setup):
    model, space, calib = setup
    values = input_values(model, calib, space, mode="block")
    whole = input_values(model, calib, space, mode="whole")
    for a, b in zip(values, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    group, layer = recipe_tables(model, space, values)
    for j in range(3):  # uniform plans: the group table sums to the layer table, in cost and storage
        assert group.objective(np.full(group.n_items, j)) == pytest.approx(layer.objective(np.full(layer.n_items, j)), rel=1e-9)
        assert group.average_bits(np.full(group.n_items, j)) == pytest.approx(layer.average_bits(np.full(layer.n_items, j)))
    assert group.average_bits(np.full(group.n_items, 1)) == pytest.approx(code_budget(3, QUANT).value)
    assert code_budget(3, QuantizerConfig(scheme=Scheme.AFFINE, group_size=128)).value == pytest.approx(3 + 24 / 128)


def test_errors(setup):
    model, space, calib = setup
    with pytest.raises(ConfigError, match="grouped quantizer"):
        code_budget(3, QuantizerConfig())
    with pytest.raises(CostTableError, match="one tensor per unit"):
        error_weighted_costs(model, space, [])
    with pytest.raises(CostTableError, match="must be"):
        error_weighted_costs(model, space, [torch.ones(3) for _ in space.units])
    with pytest.raises(ConfigError, match="`mode` must be"):
        input_values(model, calib, space, mode="all")
