"""ZeroQ distilled data: the BN-statistics loss goes down, and the data calibrates estimators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.errors import ConfigError, DataError
from mpsearch.sensitivity import Calibration, DistilledData, OBSSalience, bn_statistics_loss, distill_bn_data, pseudo_label_loss
from mpsearch.space.discover import discover
from mpsearch.zoo import load_pretrained

pytestmark = pytest.mark.torch_threads(1)


@pytest.fixture(scope="module")
def distilled() -> tuple[nn.Module, DistilledData, dict]:
    torch.set_num_threads(1)
    model = load_pretrained("resnet20")
    model.train()  # distilling must leave the mode as found
    before = {k: v.clone() for k, v in model.state_dict().items()}
    return model, distill_bn_data(model, n=16, steps=100, lr=0.2, seed=0, progress=False), before


def test_bn_loss_lowered_tenfold_on_resnet20(distilled):
    model, data, _ = distilled
    assert data.loss_before >= 10 * data.loss_after, (data.loss_before, data.loss_after)
    assert data.reduction >= 10 and len(data.history) == 100
    assert data.inputs.shape == (16, 3, 32, 32) and not data.inputs.requires_grad
    model.eval()
    with torch.no_grad():
        assert float(bn_statistics_loss(model, data.inputs)) == pytest.approx(data.loss_after, rel=1e-5)


def test_model_left_as_found(distilled):
    model, _, before = distilled
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_distilled_data_calibrates_estimators(distilled):
    model, data, _ = distilled
    calib = data.calibration(batch_size=8)
    assert calib.sizes == (8, 8) and calib.loss_fn is pseudo_label_loss
    space = discover(model)
    sens = OBSSalience(progress=False).estimate(model, calib, space)
    assert all(v > 0 for v in sens.scores.values())
    model.eval()
    with torch.no_grad():
        loss = calib.mean_loss(model)
    assert torch.isfinite(loss) and float(loss) > 0  # a non-degenerate loss at the fp32 weights


def test_seeded_and_validated():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    a = distill_bn_data(net, n=4, shape=(3, 6, 6), steps=5, seed=3, progress=False)
    b = distill_bn_data(net, n=4, shape=(3, 6, 6), steps=5, seed=3, progress=False)
    assert torch.equal(a.inputs, b.inputs) and a.history == b.history
    with pytest.raises(ConfigError, match="`steps` must be"):
        distill_bn_data(net, steps=0)
    with pytest.raises(ConfigError, match="`n` must be at least 2"):
        distill_bn_data(net, n=1)
    with pytest.raises(DataError, match="BatchNorm2d"):
        distill_bn_data(nn.Sequential(nn.Conv2d(3, 2, 3)), n=2, steps=1, progress=False)


def test_from_inputs_validates():
    with pytest.raises(DataError, match="floating-point tensor"):
        Calibration.from_inputs(torch.zeros(3, 2, dtype=torch.int32))  # int64 (N, T) are token windows
    with pytest.raises(DataError, match="`batch_size`"):
        Calibration.from_inputs(torch.zeros(3, 2), batch_size=0)
