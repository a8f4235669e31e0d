"""Per-tensor activation quantization: grid, calibration, hooks, plans, and a real W8A8 model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mpsearch.core.errors import BitsOutOfRangeError, PlanFormatError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.kernels.activations import attach_activation_quant, calibrate_ranges, quantize_tensor


def test_grid_by_hand():
    x = torch.tensor([-0.2, 0.0, 0.1, 0.34, 0.5, 0.9, 1.0, 1.7])
    # [0, 1] at 2 bits: levels 0, 1/3, 2/3, 1; negatives clip to 0, above 1 clips to 1
    expected = torch.tensor([0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert torch.allclose(quantize_tensor(x, 2, 0.0, 1.0), expected)
    # zero stays exact for a range that straddles it
    assert quantize_tensor(torch.zeros(3), 3, -0.7, 1.3).abs().max() == 0


def test_calibrated_ranges_are_min_max_of_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    batches = [torch.randn(8, 4), torch.randn(8, 4) * 3]
    ranges = calibrate_ranges(net, batches, ["0", "2"])
    stacked = torch.cat(batches)
    assert ranges["0"] == pytest.approx((float(stacked.min()), float(stacked.max())))
    hidden = torch.relu(net[0](stacked))
    assert ranges["2"] == pytest.approx((0.0, float(hidden.detach().max())), rel=1e-6)
    clipped = calibrate_ranges(net, batches, ["0"], percentile=90)
    assert ranges["0"][0] < clipped["0"][0] <= 0 <= clipped["0"][1] < ranges["0"][1]
    with pytest.raises(PlanMismatchError, match="not"):
        calibrate_ranges(net, batches, ["nope"])


def test_hooks_quantize_inputs_and_come_off():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    before = net(x)
    handles = attach_activation_quant(net, {"0": 3}, {"0": (-2.0, 2.0)})
    manual = nn.functional.linear(quantize_tensor(x, 3, -2.0, 2.0), net[0].weight, net[0].bias)
    assert torch.allclose(net(x), manual)
    for h in handles:
        h.remove()
    assert torch.equal(net(x), before)
    with pytest.raises(PlanMismatchError, match="ranges are missing"):
        attach_activation_quant(net, {"0": 8}, {})


def test_plan_with_activations_round_trips_and_validates():
    plan = BitPlan(bits={"fc": 4}).with_activations({"fc": 8}, {"fc": (-1.5, 2.0)})
    back = BitPlan.from_json(plan.to_json())
    assert back == plan and json.loads(plan.to_json())["activations"]["ranges"]["fc"] == [-1.5, 2.0]
    with pytest.raises(BitsOutOfRangeError, match="activation bits must be an integer within 2..8"):
        BitPlan(bits={"fc": 4}, activation_bits={"fc": 1}, activation_ranges={"fc": (0.0, 1.0)})
    with pytest.raises(PlanFormatError, match="need a calibrated range"):
        BitPlan(bits={"fc": 4}, activation_bits={"fc": 8})
    with pytest.raises(PlanFormatError, match="lo <= 0 <= hi"):
        BitPlan(bits={"fc": 4}, activation_bits={"fc": 8}, activation_ranges={"fc": (0.5, 1.0)})


def test_resnet20_w8a8_keeps_accuracy_and_a3_loses_it():
    from mpsearch.zoo.data import load_cifar10, to_tensor
    from mpsearch.zoo.eval import accuracy
    from mpsearch.zoo.models import load_pretrained

    model = load_pretrained("resnet20")
    images, labels = load_cifar10()
    x, y = to_tensor(images), torch.from_numpy(labels)
    units = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ranges = calibrate_ranges(model, [x[:128]], units)
    base = BitPlan(bits={u: 8 for u in units})
    fp32 = accuracy(model, x[128:628], y[128:628])
    w8a8 = accuracy(fake_quantize_model(model, base.with_activations({u: 8 for u in units}, ranges)), x[128:628], y[128:628])
    w8a3 = accuracy(fake_quantize_model(model, base.with_activations({u: 3 for u in units}, ranges)), x[128:628], y[128:628])
    assert abs(w8a8 - fp32) <= 1.0
    assert w8a3 < w8a8 - 5
