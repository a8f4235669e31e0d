"""ZeroQ perturbation: KL per unit and width, bit-exact restore, agreement with a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
from _estimator_fixtures import minilm_calibration, resnet20_calibration
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError
from mpsearch.kernels.fake import fake_quantize_model
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration
from mpsearch.sensitivity.perturbation import PerturbationKL, output_divergence
from mpsearch.space.discover import discover

FAST = QuantizerConfig()  # no clipping search: quick enough for tests


def small_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 2, 5, 5, generator=g), torch.randint(0, 3, (12,), generator=g)
    calib = Calibration.classification(x, y, batch_size=5)
    space = discover(model, bits=(2, 8), pin_first_last=None, quantizer=FAST)
    return model, calib, space


def test_kl_is_near_zero_at_8_bits_and_larger_at_2_bits():
    model, calib, space = small_setup()
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    for name in space.names:
        costs = sens.unit_costs[name]
        assert 0 <= costs[8] < 1e-4
        assert costs[8] < costs[2]


def test_weights_are_restored_bit_exactly():
    model, calib, space = small_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PerturbationKL(progress=False).estimate(model, calib, space)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_kl_equals_a_direct_computation_on_a_quantized_copy():
    model, calib, space = small_setup()
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    copy = fake_quantize_model(model, {"3": 2}, space.quantizer)
    x = torch.cat([b[0] for b in calib.batches])
    with torch.no_grad():
        p = torch.softmax(model(x).double(), dim=1)
        q = torch.softmax(copy(x).double(), dim=1)
    direct = float((p * (p.log() - q.log())).sum(dim=1).mean())
    assert math.isclose(sens.unit_costs["3"][2], direct, rel_tol=1e-6)


def test_cost_table_uses_the_measured_costs():
    model, calib, space = small_setup()
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    table = build_cost_table(model, space, sens)
    assert table.cost[0, 0] == sens.unit_costs["0"][2]


def test_time_limit_extrapolates_the_units_not_reached():
    model, calib, space = small_setup()
    sens = PerturbationKL(progress=False, time_limit=1e-9).estimate(model, calib, space)
    assert sens.details["extrapolated"] == ["3"]
    assert all(math.isfinite(c) and c >= 0 for c in sens.unit_costs["3"].values())


def test_divergences_and_options():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(output_divergence(a, a * 2, "cosine")) < 1e-12
    assert float(output_divergence(a, -a, "kl")) > 0
    with pytest.raises(ConfigError, match="`metric` must be one of"):
        PerturbationKL(metric="mse")


def test_runs_on_part_of_resnet20():
    model, calib = resnet20_calibration(2)
    space = discover(model, bits=(2, 8), include=["layer1.0.*", "linear"], quantizer=FAST)
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    assert set(sens.unit_costs) == set(space.names)
    assert all(math.isfinite(c) and c >= 0 for per in sens.unit_costs.values() for c in per.values())


@pytest.mark.slow
def test_runs_on_resnet20():
    model, calib = resnet20_calibration(4)
    space = discover(model, bits=(2, 8), quantizer=FAST)
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    assert set(sens.unit_costs) == set(space.names)
    assert all(math.isfinite(c) and c >= 0 for per in sens.unit_costs.values() for c in per.values())


@pytest.mark.slow
def test_runs_on_minilm_with_the_cosine_analogue():
    model, calib = minilm_calibration()
    space = discover(model, bits=(2, 8), include=["encoder.layer.0.*", "pooler.*"], quantizer=FAST)
    sens = PerturbationKL(progress=False).estimate(model, calib, space)
    assert sens.details["metric"] == "cosine"
    assert all(math.isfinite(c) and c >= 0 for per in sens.unit_costs.values() for c in per.values())
    assert sens.unit_costs["pooler.dense"][8] == 0.0  # mean pooling never uses the pooler
