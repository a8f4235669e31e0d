"""Tests for model-level fake quantization (mpsearch/kernels/fake.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.errors import BitsOutOfRangeError, DataError, MPSearchError, PlanMismatchError
from mpsearch.kernels.fake import fake_quantize_model, quantizable_kind
from mpsearch.kernels.quantize import (
    QuantizerConfig,
    fake_quantize,
    fake_quantize_groups,
    matrix_to_weight,
    weight_matrix,
)


class Conv1D(nn.Module):
    """Stand-in with the shape of transformers' Conv1D: weight (in, out), attribute nf = out."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 6)
        self.proj = Conv1D(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.fc(self.pool(self.act(self.conv(x))).flatten(1)))


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_quantizable_kind() -> None:
    net = Net()
    assert quantizable_kind(net.conv) == "conv2d"
    assert quantizable_kind(net.fc) == "linear"
    assert quantizable_kind(net.proj) == "conv1d"
    assert quantizable_kind(net.act) is None
    assert quantizable_kind(nn.Conv1d(2, 2, 3)) is None  # torch's Conv1d is not HF's Conv1D
    assert quantizable_kind(net) is None


def test_only_named_units_change() -> None:
    net = Net()
    before = params(net)
    cfg = QuantizerConfig(scheme="affine", group_size=8)
    q = fake_quantize_model(net, {"conv": 3, "proj": 2, "fc": 16}, cfg)
    assert q is not net
    assert all(torch.equal(v, before[k]) for k, v in params(net).items())  # original untouched
    after = params(q)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"conv.weight", "proj.weight"}
    for name, kind, bits in (("conv", "conv2d", 3), ("proj", "conv1d", 2)):
        w = before[f"{name}.weight"]
        expected = matrix_to_weight(fake_quantize(weight_matrix(w, kind), bits, cfg), w.shape, kind)
        assert torch.equal(after[f"{name}.weight"], expected)
    out = q(torch.randn(2, 3, 5, 5))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_conv1d_groups_run_along_input_features() -> None:
    net = Net()
    cfg = QuantizerConfig(group_size=4)
    q = fake_quantize_model(net, {"proj": 3}, cfg)
    rows = net.proj.weight.detach().t()  # (out=4, in=6): groups of 4 then 2 inputs per row
    assert torch.equal(q.proj.weight.t(), fake_quantize(rows, 3, cfg))


def test_per_group_widths() -> None:
    net = Net()
    cfg = QuantizerConfig(group_size=8)
    bits = torch.tensor([[2, 4, 16, 8]] * 8)  # conv: 8 rows, fan_in 27 -> 4 groups
    q = fake_quantize_model(net, {"conv": bits}, cfg)
    mat = weight_matrix(net.conv.weight.detach(), "conv2d")
    expected = fake_quantize_groups(mat, bits, cfg)
    assert torch.equal(weight_matrix(q.conv.weight, "conv2d"), expected)
    assert torch.equal(expected[:, 16:24], mat[:, 16:24])  # the 16-bit group is left alone


def test_inplace_changes_the_model_itself() -> None:
    net = Net()
    before = net.fc.weight.detach().clone()
    out = fake_quantize_model(net, {"fc": 4}, inplace=True)
    assert out is net
    assert torch.equal(net.fc.weight, fake_quantize(before, 4))
    assert net.fc.weight.requires_grad


def test_unknown_names_are_listed() -> None:
    net = Net()
    with pytest.raises(PlanMismatchError, match=r"2 do not: 'fc2', 'layer1\.conv'.*'conv'"):
        fake_quantize_model(net, {"fc": 4, "fc2": 4, "layer1.conv": 4})


def test_non_quantizable_modules_are_rejected() -> None:
    with pytest.raises(PlanMismatchError, match=r"act \(ReLU\)"):
        fake_quantize_model(Net(), {"act": 4})


def test_bad_bits_leave_an_inplace_model_untouched() -> None:
    net = Net()
    before = params(net)
    with pytest.raises(BitsOutOfRangeError, match="within 1..8 or 16"):
        fake_quantize_model(net, {"conv": 4, "fc": 9}, inplace=True)
    with pytest.raises(DataError, match="shape"):
        fake_quantize_model(net, {"conv": 4, "fc": torch.tensor([[4]])},
                            QuantizerConfig(group_size=4), inplace=True)
    with pytest.raises(MPSearchError, match="group_size"):
        fake_quantize_model(net, {"fc": torch.full((6, 1), 4)}, inplace=True)
    assert all(torch.equal(v, before[k]) for k, v in params(net).items())


def test_tied_weights() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    original = net[0].weight.detach().clone()
    q = fake_quantize_model(net, {"0": 3, "1": 3})
    assert q[0].weight is q[1].weight
    assert torch.equal(q[0].weight, fake_quantize(original, 3))  # quantized once, not twice
    with pytest.raises(PlanMismatchError, match="same bits"):
        fake_quantize_model(net, {"0": 3, "1": 4})
