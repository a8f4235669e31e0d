"""GPTQ-error costs (mpsearch/pricing/gptq_errors.py and build_cost_table(error="gptq"))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import MPSearchError
from mpsearch.kernels.gptq import HessianAccumulator, output_error
from mpsearch.kernels.quantize import dequantize, quant_error, quantize
from mpsearch.pricing.gptq_errors import gptq_errors, gptq_unit_errors
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity.base import Sensitivity
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover

CONFIGS = [QuantizerConfig(method="gptq"), QuantizerConfig(method="gptq", scheme="affine", clip_search=True, clip_grid=8),
           QuantizerConfig(method="gptq", scheme="affine", group_size=32),
           QuantizerConfig(method="gptq", group_size=32, act_order=True)]


def correlated_layer(seed: int, out: int = 24, K: int = 96, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out, K, generator=gen)
    mix = torch.randn(K, K, generator=gen) / K**0.5 + torch.eye(K)
    X = (torch.randn(n, K, generator=gen) @ mix) * torch.rand(K, generator=gen).add(0.2)
    acc = HessianAccumulator(K)
    acc.add(X)
    return W, acc.hessian()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["channel", "channel-mse", "g32", "g32-actorder"])
@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_identity_hessian_gives_the_round_to_nearest_error(cfg: QuantizerConfig, scale: float) -> None:
    W, _ = correlated_layer(0)
    shares = gptq_unit_errors(W, scale * torch.eye(96), [2, 3, 4, 8, 16], cfg)
    for b in (2, 3, 4, 8):
        assert float(shares[b].sum()) == pytest.approx(quant_error(W, b, cfg), rel=1e-5)
    assert float(shares[16].abs().sum()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["channel", "channel-mse", "g32", "g32-actorder"])
def test_gptq_error_at_most_round_to_nearest_for_every_width(seed: int, cfg: QuantizerConfig) -> None:
    W, H = correlated_layer(seed)
    Hd = H + cfg.damp * H.diagonal().mean() * torch.eye(H.shape[0])
    norm = float(Hd.diagonal().mean())
    shares = gptq_unit_errors(W, H, [2, 3, 4], cfg)
    for b, s in shares.items():
        rtn = output_error(dequantize(quantize(W, b, cfg)) - W, Hd) / norm
        assert bool((s >= 0).all())
        assert float(s.sum()) <= rtn
        assert float(s.sum()) < 0.9 * rtn  # correlated inputs leave GPTQ room to compensate


def model_and_data(group_size: int | None) -> tuple[nn.Module, object, Calibration]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    space = discover(net, bits=(2, 3, 4, 8), pin_first_last=None,
                     quantizer=QuantizerConfig(method="gptq", scheme="affine", group_size=group_size))
    x = torch.randn(96, 16) @ (torch.randn(16, 16) / 4 + torch.eye(16))
    return net, space, Calibration.classification(x, torch.randint(0, 5, (96,)), batch_size=32)


def test_unit_errors_are_the_layer_output_errors_of_the_model_inputs() -> None:
    net, space, calib = model_and_data(None)
    units, groups = gptq_errors(net, space, calib)
    assert groups is None
    x = torch.cat([b[0] for b in calib.batches])
    H = x.t() @ x
    ref = gptq_unit_errors(net[0].weight.detach(), H, [2, 3, 4, 8], space.quantizer)
    for b in (2, 3, 4, 8):
        assert units["0"][b] == pytest.approx(float(ref[b].sum()), rel=1e-4)
    assert units["0"][2] > units["0"][3] > units["0"][4] > units["0"][8] > 0


def test_cost_tables_weight_gptq_errors_by_scores_and_groups_sum_to_units() -> None:
    net, space, calib = model_and_data(8)
    units, groups = gptq_errors(net, space, calib)
    scores = {"0": 2.0, "2": 0.5}
    group_scores = {"0": np.full((32, 2), 2.0), "2": np.full((5, 4), 0.5)}
    sens = Sensitivity(method="test", scores=scores, group_scores=group_scores)
    layer = build_cost_table(net, space, sens, granularity="layer", error="gptq", calibration=calib)
    group = build_cost_table(net, space, sens, granularity="group", error="gptq", calibration=calib)
    assert layer.meta["error"] == "gptq" and group.meta["error"] == "gptq"
    for i, name in enumerate(space.names):
        np.testing.assert_allclose(layer.cost[i], [scores[name] * units[name][b] for b in layer.bits], rtol=1e-6)
        per_group = group.cost[group.items.unit_slice(name)]
        np.testing.assert_allclose(per_group.sum(axis=0), layer.cost[i], rtol=1e-5)
        np.testing.assert_allclose(groups[name].sum(axis=0), [units[name][b] for b in layer.bits], rtol=1e-5)
    rtn = build_cost_table(net, space, sens, granularity="layer")
    assert rtn.meta["error"] == "rtn" and not np.allclose(rtn.cost, layer.cost)


def test_bad_error_options_are_refused() -> None:
    net, space, calib = model_and_data(None)
    sens = Sensitivity(method="test", scores={"0": 1.0, "2": 1.0})
    with pytest.raises(MPSearchError, match="`error` must be 'rtn' or 'gptq'.*error='obs'"):
        build_cost_table(net, space, sens, error="obs", calibration=calib)
    with pytest.raises(MPSearchError, match="needs the calibration data.*calibration=None.*Pass calibration="):
        build_cost_table(net, space, sens, error="gptq")
    rtn_space = discover(net, bits=(2, 4), pin_first_last=None)
    with pytest.raises(MPSearchError, match="method='gptq', but it has method='rtn'"):
        build_cost_table(net, rtn_space, sens, error="gptq", calibration=calib)
    own = Sensitivity(method="zeroq", scores={"0": 1.0, "2": 1.0}, unit_costs={"0": {2: 1.0}, "2": {2: 1.0}})
    with pytest.raises(MPSearchError, match="gives its own per-width costs"):
        build_cost_table(net, space, own, error="gptq", calibration=calib)
