"""Hutchinson's diagonal and the power-iteration eigenvalue against the exact Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import exact_hessian_block, tiny_data, tiny_net, trained_tiny_net

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError, MPSearchError
from mpsearch.kernels.quantize import quant_error, weight_matrix
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration, HutchinsonDiagonal, HutchinsonTrace, PowerIterationEigen
from mpsearch.sensitivity._tensors import group_reduce
from mpsearch.space.discover import discover
from mpsearch.space.quant_errors import quantization_group_errors

G = 9  # conv fan_in 18 -> 2 blocks; fc1 48 -> 6 blocks (last one 3 wide); fc2 5 -> 1 block


pytestmark = pytest.mark.torch_threads(1)  # thousands of tiny products: threads only add overhead


@pytest.fixture(scope="module")
def trained():
    x, y = tiny_data()
    return trained_tiny_net(x, y), x, y


def group_sizes(fan_in: int) -> np.ndarray:
    n = -(-fan_in // G)
    sizes = np.full(n, float(G))
    sizes[-1] = fan_in - G * (n - 1)
    return sizes


def test_diagonal_matches_exact_hessian_per_group_within_5_percent(trained):
    model, x, y = trained
    cfg = QuantizerConfig(group_size=G)
    space = discover(model, pin_first_last=None, quantizer=cfg)
    calib = Calibration.classification(x, y, batch_size=24)
    sens = HutchinsonDiagonal(probes=8000, seed=0, progress=False).estimate(model, calib, space)
    for unit in space.units:
        h = exact_hessian_block(model, x, y, unit.name)
        diag = h.diagonal().reshape(unit.weight_shape)
        exact = group_reduce(weight_matrix(diag, unit.kind), cfg, "sum")
        got = sens.group_scores[unit.name] * group_sizes(unit.fan_in)[None, :]
        assert got.shape == exact.shape == (unit.out_features, len(group_sizes(unit.fan_in)))
        np.testing.assert_allclose(got, exact, rtol=0.05)
        assert sens.scores[unit.name] == pytest.approx(float(diag.mean()), rel=0.05)
        assert sens.details["trace"][unit.name] == pytest.approx(float(diag.sum()), rel=0.05)


def test_top_eigenvalue_matches_eigvalsh_within_5_percent(trained):
    model, x, y = trained
    space = discover(model, pin_first_last=None)
    calib = Calibration.classification(x, y, batch_size=8)  # 3 batches: the mean-loss Hessian
    sens = PowerIterationEigen(max_iter=500, tol=1e-7, seed=0, progress=False).estimate(model, calib, space)
    for unit in space.units:
        top = float(torch.linalg.eigvalsh(exact_hessian_block(model, x, y, unit.name)).max())
        assert sens.details["eigenvalue"][unit.name] == pytest.approx(top, rel=0.05)
        assert sens.scores[unit.name] == pytest.approx(top, rel=0.05)
        assert sens.details["converged"][unit.name]


def test_group_cost_is_group_score_times_group_error():
    model = tiny_net()
    x, y = tiny_data()
    cfg = QuantizerConfig(scheme="affine", group_size=8, clip_search=True)
    space = discover(model, pin_first_last=None, bits=(2, 4, 8), quantizer=cfg)
    sens = HutchinsonDiagonal(probes=4, progress=False).estimate(model, Calibration.classification(x, y), space)
    costs = build_cost_table(model, space, sens)
    assert costs.meta["granularity"] == "group" and costs.meta["estimator"] == "hessian_diag"
    single = QuantizerConfig(scheme="affine", clip_search=True)  # one group = one row of its own
    modules = dict(model.named_modules())
    for unit in space.units:
        w = weight_matrix(modules[unit.name].weight.detach(), unit.kind)
        rows = costs.items.unit_slice(unit.name)
        scores = sens.group_scores[unit.name].reshape(-1)
        n_blocks = sens.group_scores[unit.name].shape[1]
        for j, b in enumerate(costs.bits):
            for item in range(0, rows.stop - rows.start, 5):  # a sample of the groups
                r, k = divmod(item, n_blocks)
                err = quant_error(w[r : r + 1, k * 8 : (k + 1) * 8], b, single)
                assert costs.cost[rows.start + item, j] == pytest.approx(scores[item] * err, rel=1e-9, abs=1e-15)
    errors = quantization_group_errors(model, space)  # the groups' errors add up to the unit's
    for unit in space.units:
        w = weight_matrix(modules[unit.name].weight.detach(), unit.kind)
        for j, b in enumerate(costs.bits):
            assert errors[unit.name][:, j].sum() == pytest.approx(quant_error(w, b, cfg), rel=1e-9)


def test_layer_granularity_and_errors():
    model = tiny_net()
    x, y = tiny_data()
    grouped = discover(model, pin_first_last=None, quantizer=QuantizerConfig(group_size=8))
    calib = Calibration.classification(x, y)
    sens = HutchinsonDiagonal(probes=4, progress=False).estimate(model, calib, grouped)
    assert build_cost_table(model, grouped, sens, granularity="layer").n_items == 3
    trace = HutchinsonTrace(max_probes=4, min_probes=2, progress=False).estimate(model, calib, grouped)
    assert build_cost_table(model, grouped, trace).n_items == 3  # no group scores: layer items
    with pytest.raises(MPSearchError, match="group-granularity costs need"):
        build_cost_table(model, grouped, trace, granularity="group")
    other = discover(model, pin_first_last=None, quantizer=QuantizerConfig(group_size=4))
    with pytest.raises(MPSearchError, match="group scores must have shape"):
        build_cost_table(model, other, sens)
    with pytest.raises(MPSearchError, match="`granularity` must be"):
        build_cost_table(model, grouped, sens, granularity="rows")


@pytest.mark.parametrize("factory, match", [
    (lambda: HutchinsonDiagonal(probes=0), "`probes` must be"),
    (lambda: PowerIterationEigen(max_iter=1), "`max_iter` must be"),
    (lambda: PowerIterationEigen(tol=0), "`tol` must be"),
])
def test_bad_settings(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


def test_eigen_uses_first_samples_and_skips_pinned(trained):
    model, x, y = trained
    space = discover(model)  # first and last unit pinned
    calib = Calibration.classification(x, y, batch_size=8)
    sens = PowerIterationEigen(max_iter=300, tol=1e-7, max_samples=12, progress=False).estimate(model, calib, space)
    assert sens.details["skipped_pinned"] == ["0", "5"] and sens.scores["0"] == 0.0
    top = float(torch.linalg.eigvalsh(exact_hessian_block(model, x[:12], y[:12], "3")).max())
    assert sens.scores["3"] == pytest.approx(top, rel=0.05)
