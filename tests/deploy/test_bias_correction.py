"""Bias correction: measured shifts, carried by the plan into fake-quant, packed and exported models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.errors import DataError, PlanFormatError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply
from mpsearch.deploy.bias_correction import add_bias_correction, measure_bias_correction
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.export import export, load


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5)).eval()


PLAN = BitPlan(bits={"0": 2, "2": 3, "5": 16}, quantizer=RECOMMENDED)


def test_linear_correction_equals_the_closed_form() -> None:
    """For one linear layer the mean shift is (W_q - W) @ mean(x), exactly."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 4))
    x = torch.randn(256, 16) + 0.5
    plan = BitPlan(bits={"0": 2})
    dw = fake_quantize_model(net, plan)[0].weight - net[0].weight
    expected = -(dw.double() @ x.double().mean(0))
    got = torch.tensor(measure_bias_correction(net, plan, [x[:100], x[100:]])["0"], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-6)


def test_correction_removes_the_mean_shift_of_the_first_unit() -> None:
    net = conv_net()
    x = torch.randn(32, 3, 6, 6) + 0.3
    corrected = fake_quantize_model(net, PLAN.with_bias_correction(measure_bias_correction(net, PLAN, [x])))
    plain = fake_quantize_model(net, PLAN)
    def shift(m):
        return (m[0](x) - net[0](x)).mean(dim=(0, 2, 3)).abs().max()
    assert shift(plain) > 1e-3 and shift(corrected) < 1e-5
    assert corrected[0].bias is not None and net[0].bias is None  # the original model is untouched


def test_the_correction_reaches_packed_and_exported_models(tmp_path) -> None:
    net = conv_net()
    x = torch.randn(16, 3, 6, 6)
    plan = PLAN.with_bias_correction(measure_bias_correction(net, PLAN, [(x, torch.zeros(16))]))
    assert BitPlan.from_json(plan.to_json()) == plan
    reference = fake_quantize_model(net, plan)(x)
    for backend in ("reference", "torch", "numba"):
        assert torch.allclose(apply(net, plan, backend=backend)(x), reference, rtol=1e-5, atol=1e-5), backend
    export(apply(net, plan), plan, tmp_path / "q")
    assert torch.equal(load(tmp_path / "q", conv_net())(x), apply(net, plan)(x))


def test_tokens_outside_the_mask_do_not_count() -> None:
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask):
            return self.proj(input_ids.float())

    torch.manual_seed(2)
    enc = Encoder()
    tokens = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    plan = BitPlan(bits={"proj": 2})
    padded = tokens.clone()
    padded[mask == 0] = 100.0  # garbage in padded positions must not move the correction
    a = measure_bias_correction(enc, plan, [{"input_ids": tokens, "attention_mask": mask}])
    b = measure_bias_correction(enc, plan, [{"input_ids": padded, "attention_mask": mask}])
    assert torch.allclose(torch.tensor(a["proj"]), torch.tensor(b["proj"]), atol=1e-6)


def test_bad_corrections_are_clear_errors() -> None:
    net = conv_net()
    with pytest.raises(PlanFormatError, match="finite numbers"):
        PLAN.with_bias_correction({"0": [float("inf")] * 8})
    with pytest.raises(PlanFormatError, match="not quantized"):
        PLAN.with_bias_correction({"5": [0.0] * 5})
    with pytest.raises(PlanMismatchError, match="one value per output channel"):
        fake_quantize_model(net, PLAN.with_bias_correction({"0": [0.0] * 3}))
    with pytest.raises(PlanMismatchError, match="not in it"):
        add_bias_correction(net, {"nope": [0.0]})
    with pytest.raises(DataError, match="at least one calibration batch"):
        measure_bias_correction(net, PLAN, [])


def test_per_group_plans_are_corrected_too() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 4))
    plan = BitPlan(bits={"0": [2, 3] * 4}, quantizer=QuantizerConfig(scheme="affine", group_size=4))
    x = torch.randn(64, 8) + 1.0
    corrections = measure_bias_correction(net, plan, [x])
    q = fake_quantize_model(net, plan.with_bias_correction(corrections))
    assert (q(x) - net(x)).mean(0).abs().max() < 1e-5


def test_transformers_conv1d_units_are_corrected_per_output_channel() -> None:
    class Conv1D(nn.Module):  # transformers' layout: weight (in, out), y = x @ W + b
        def __init__(self, nf: int, nx: int):
            super().__init__()
            self.nf = nf
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.zeros(nf))

        def forward(self, x):
            return x @ self.weight + self.bias

    torch.manual_seed(4)
    net = nn.Sequential(Conv1D(3, 8))  # 8 inputs, 3 outputs: the weight's first dimension is not the output
    plan = BitPlan(bits={"0": 2})
    x = torch.randn(64, 8) + 1.0
    corrections = measure_bias_correction(net, plan, [x])
    assert len(corrections["0"]) == 3
    q = fake_quantize_model(net, plan.with_bias_correction(corrections))
    assert (q(x) - net(x)).mean(0).abs().max() < 1e-5
