"""Fisher, first-order, GWQ and OBS salience against hand and autograd computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import tiny_data, tiny_net
from torch import nn
from torch.func import functional_call, grad, vmap

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError
from mpsearch.kernels.quantize import weight_matrix
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity import Calibration, FirstOrderSalience, FisherDiagonal, GradientOutliers, OBSSalience
from mpsearch.sensitivity._tensors import group_reduce
from mpsearch.sensitivity.salience_obs import layer_input_rows
from mpsearch.space.discover import discover

CFG = QuantizerConfig(group_size=8)


pytestmark = pytest.mark.torch_threads(1)


def setup():
    model, (x, y) = tiny_net(), tiny_data()
    space = discover(model, pin_first_last=None, quantizer=CFG)
    return model, x, y, space, Calibration.classification(x, y, batch_size=8)


def per_weight_weights(model, space):
    modules = dict(model.named_modules())
    return {u.name: modules[u.name].weight.detach().double() for u in space.units}


def check(sens, space, per_weight: dict[str, torch.Tensor]):
    for unit in space.units:
        mat = weight_matrix(per_weight[unit.name], unit.kind)
        assert sens.scores[unit.name] == pytest.approx(float(mat.mean()), rel=1e-6, abs=1e-15)
        np.testing.assert_allclose(sens.group_scores[unit.name], group_reduce(mat, CFG, "mean"), rtol=1e-6, atol=1e-15)


def per_sample_grads(model, x, y, space):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return {u.name: grads[f"{u.name}.weight"].double() for u in space.units}


def full_gradient(model, x, y, space):
    params = dict(model.named_parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    names = [f"{u.name}.weight" for u in space.units]
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return {u.name: g.double() for u, g in zip(space.units, grads)}


def test_fisher_is_mean_squared_per_sample_gradient():
    model, x, y, space, calib = setup()
    sens = FisherDiagonal(progress=False).estimate(model, calib, space)
    check(sens, space, {n: g.square().mean(dim=0) for n, g in per_sample_grads(model, x, y, space).items()})
    assert sens.details["gradients"] == "per-sample"


def test_fisher_micro_batches_square_micro_batch_gradients():
    model, x, y, space, calib = setup()
    sens = FisherDiagonal(micro_batch=4, progress=False).estimate(model, calib, space)
    parts = [full_gradient(model, x[i : i + 4], y[i : i + 4], space) for i in range(0, 24, 4)]
    check(sens, space, {u.name: sum(p[u.name].square() for p in parts) / len(parts) for u in space.units})


def test_first_order_is_abs_weight_times_gradient():
    model, x, y, space, calib = setup()
    sens = FirstOrderSalience(progress=False).estimate(model, calib, space)
    w, g = per_weight_weights(model, space), full_gradient(model, x, y, space)
    check(sens, space, {n: (w[n] * g[n]).abs() for n in w})


def test_gwq_is_outlier_density_of_the_top_percent_gradients():
    model, x, y, space, calib = setup()
    sens = GradientOutliers(fraction=0.05, progress=False).estimate(model, calib, space)
    g = full_gradient(model, x, y, space)
    flat = np.concatenate([g[u.name].abs().reshape(-1).numpy() for u in space.units])
    k = int(np.ceil(0.05 * flat.size))
    threshold = np.sort(flat)[::-1][k - 1]
    masks = {n: (v.abs() >= threshold).double() for n, v in g.items()}
    assert sum(int(m.sum()) for m in masks.values()) == k  # no ties at the threshold
    check(sens, space, masks)
    assert sum(sens.details["share"].values()) == pytest.approx(1.0)
    assert sens.details["share"][space.names[1]] == pytest.approx(float(masks[space.names[1]].sum()) / k)


def obs_layer() -> tuple[nn.Module, torch.Tensor]:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]]))
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    return layer, x


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_obs_salience_matches_hand_computation(damp):
    layer, x = obs_layer()
    model = nn.Sequential(layer)
    # X rows (1,1,0), (0,1,0), (0,0,2): H = X^T X = [[1,1,0],[1,2,0],[0,0,4]], mean diag 7/3.
    lam = damp * 7 / 3
    det = (1 + lam) * (2 + lam) - 1  # of the 2 x 2 block [[1+lam, 1], [1, 2+lam]]
    inv_diag = np.array([(2 + lam) / det, (1 + lam) / det, 1 / (4 + lam)])  # damp 0: (2, 1, 1/4)
    w = np.array([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])
    salience = w**2 / inv_diag**2
    space = discover(model, pin_first_last=None, quantizer=QuantizerConfig(group_size=2))
    calib = Calibration.from_inputs(x, loss_fn=lambda m, b: m(b).sum(), batch_size=2)
    sens = OBSSalience(damp=damp, progress=False).estimate(model, calib, space)
    assert sens.scores["0"] == pytest.approx(salience.mean(), rel=1e-9)
    groups = np.stack([salience[:, :2].mean(axis=1), salience[:, 2]], axis=1)
    np.testing.assert_allclose(sens.group_scores["0"], groups, rtol=1e-9)
    assert sens.details["salience_sum"]["0"] == pytest.approx(salience.sum(), rel=1e-9)
    assert sens.details["rows"]["0"] == 3


def test_conv_rows_are_the_unfolded_patches():
    conv = nn.Conv2d(2, 1, 2, bias=False)
    x = torch.arange(18.0).reshape(1, 2, 3, 3)
    rows = layer_input_rows(conv, "conv2d", x)
    assert rows.shape == (4, 8)  # 2 x 2 output positions, fan_in 2 * 2 * 2
    for pos, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(rows[pos], x[0, :, i : i + 2, j : j + 2].reshape(-1))
    out = conv(x).reshape(-1)
    assert torch.allclose(rows @ conv.weight.reshape(1, -1).t(), out[:, None])


def test_salience_cost_tables_are_group_wise():
    model, _, _, space, calib = setup()
    for est in (FisherDiagonal(progress=False), FirstOrderSalience(progress=False), OBSSalience(progress=False)):
        costs = build_cost_table(model, space, est.estimate(model, calib, space))
        assert costs.meta["granularity"] == "group" and np.isfinite(costs.cost).all()


@pytest.mark.parametrize("factory, match", [
    (lambda: FisherDiagonal(micro_batch=0), "`micro_batch` must be"),
    (lambda: GradientOutliers(fraction=0.0), "`fraction` must be"),
    (lambda: OBSSalience(damp=-1), "`damp` must be"),
])
def test_bad_settings(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()
