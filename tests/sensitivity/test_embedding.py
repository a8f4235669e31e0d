"""LIM and z-score block scores: known answers, the mapping onto units, real models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _estimator_fixtures import minilm_calibration, resnet20_calibration
from torch import nn

from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity import Calibration
from mpsearch.sensitivity.embedding import (
    LayerInputModification,
    ZScoreOutliers,
    find_blocks,
    lim_of,
    zscore_share,
)
from mpsearch.space.discover import discover
from mpsearch.zoo import cifar_resnet


def test_lim_of_identical_tensors_is_zero():
    x = torch.randn(4, 5, 8)
    total, count = lim_of(x, x.clone(), None)
    assert abs(total) < 1e-12 and count == 20


def test_lim_of_an_identity_block_is_zero():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    block = model.layer1[0]  # conv2 -> 0 and a shift-free BN: relu(0 + x) = x for x >= 0
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.bn2.running_mean.zero_()
        block.bn2.bias.zero_()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    sens = LayerInputModification(progress=False).estimate(model, Calibration.classification(x, y), discover(model))
    assert abs(sens.details["block_scores"]["layer1.0"]) < 1e-12
    assert sens.details["block_scores"]["layer1.1"] > 1e-6


def test_zscore_share_matches_hand_computation():
    w = torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # mean 0, std sqrt(1/2): |z| = 1.41 for +-1
    assert zscore_share([w]) == 0.5
    a, b = torch.tensor([[0.0, 0.0], [0.0, 3.0]]), torch.tensor([1.0, 2.0])
    flat = np.array([0, 0, 0, 3, 1, 2], float)
    expected = float(np.mean(np.abs((flat - flat.mean()) / flat.std()) > 1))
    assert zscore_share([a, b]) == expected
    assert zscore_share([torch.zeros(5)]) == 0.0


def test_units_get_their_block_score_and_outside_units_the_mean():
    model = cifar_resnet(20)
    space = discover(model)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    calib = Calibration.classification(x, y)
    sens = ZScoreOutliers(progress=False).estimate(model, calib, space)
    blocks = sens.details["block_scores"]
    assert sens.scores["layer2.1.conv2"] == blocks["layer2.1"]
    assert math.isclose(sens.scores["conv1"], np.mean(list(blocks.values())))
    scaled = ZScoreOutliers(scale="weights", outside=0.0, progress=False).estimate(model, calib, space)
    assert scaled.scores["linear"] == 0.0
    pair = scaled.scores["layer2.1.conv1"] + scaled.scores["layer2.1.conv2"]
    assert math.isclose(pair, blocks["layer2.1"])


def test_blocks_and_options_are_validated():
    assert find_blocks(cifar_resnet(20))[-1] == "layer3.2"
    with pytest.raises(ConfigError, match="residual blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="`scale` must be"):
        LayerInputModification(scale="bytes")


@pytest.mark.parametrize("estimator", [LayerInputModification, ZScoreOutliers])
def test_scores_on_resnet20(estimator):
    model, calib = resnet20_calibration(8)
    space = discover(model)
    sens = estimator(progress=False).estimate(model, calib, space)
    assert set(sens.scores) == set(space.names)
    assert all(math.isfinite(v) and v >= 0 for v in sens.scores.values())


@pytest.mark.slow
@pytest.mark.parametrize("estimator", [LayerInputModification, ZScoreOutliers])
def test_scores_on_minilm(estimator):
    model, calib = minilm_calibration()
    space = discover(model)
    sens = estimator(progress=False).estimate(model, calib, space)
    assert len(sens.details["block_scores"]) == 6  # encoder.layer.0 .. 5
    assert all(math.isfinite(v) and v >= 0 for v in sens.scores.values())
