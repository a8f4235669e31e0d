"""LRP: conservation on bias-free networks, faithful programs, scores on real models."""

from __future__ import annotations

import math

import pytest
import torch
from _estimator_fixtures import minilm_calibration, resnet20_calibration
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError
from mpsearch.sensitivity import Calibration
from mpsearch.sensitivity._lrp_rules import propagate
from mpsearch.sensitivity.relevance import LayerRelevance, build_program
from mpsearch.space.discover import discover
from mpsearch.zoo import cifar_resnet


def bias_free_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5, bias=False),
    ).double().eval()


def bias_free_resnet() -> nn.Module:
    """A CIFAR ResNet-20 whose folded BatchNorms and classifier have zero bias."""
    torch.manual_seed(0)
    model = cifar_resnet(20)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.zero_()
    model.linear.bias.data.zero_()
    return model.double().eval()


def explain(model: nn.Module, x: torch.Tensor, rule: str):
    prog = build_program(model)
    with torch.no_grad():
        logits = prog.forward(x)[-1]
    start = torch.zeros_like(logits)
    idx = logits.argmax(1)
    start[torch.arange(len(x)), idx] = logits[torch.arange(len(x)), idx]
    return prog, start, propagate(prog, x, start, rule=rule, eps=1e-9, weights=True)


def assert_conserved(prog, result, start: torch.Tensor) -> None:
    """Each layer passes on what it receives; every cut through the network carries the total."""
    total = start.sum(dim=1)
    for name, r_out in result.unit_outputs.items():  # layer to layer: output neurons -> weights
        w_sum, out_sum = float(result.unit_weights[name].sum()), float(r_out.sum())
        assert math.isclose(w_sum, out_sum, rel_tol=1e-4, abs_tol=1e-9), name
    has_adds = any(op.kind == "add" for op in prog.ops)
    for k, op in enumerate(prog.ops, start=1):  # cuts: chain layers, residual sums, first and last op
        if op.kind == "add" or k in (1, len(prog.ops)) or (op.kind == "affine" and not has_adds):
            torch.testing.assert_close(result.values[k].flatten(1).sum(1), total, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(result.values[0].flatten(1).sum(1), total, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("factory", [bias_free_sequential, bias_free_resnet])
def test_epsilon_rule_conserves_relevance_without_biases(factory):
    model = factory()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prog, start, result = explain(model, x, "epsilon")
    assert_conserved(prog, result, start)


@pytest.mark.parametrize("factory", [bias_free_sequential, bias_free_resnet])
def test_zplus_rule_conserves_relevance_on_positive_inputs(factory):
    model = factory()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    prog, start, result = explain(model, x, "zplus")
    assert_conserved(prog, result, start)
    if factory is bias_free_sequential:  # without signed residual splits, z+ relevance stays >= 0
        assert all(float(r.min()) >= -1e-12 for r in result.unit_outputs.values())


def test_bias_absorbs_relevance_when_present():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    x = torch.randn(2, 4, dtype=torch.float64)
    _, start, result = explain(model, x, "epsilon")
    assert not torch.allclose(result.values[0].sum(1), start.sum(1), rtol=1e-4)


def test_programs_reproduce_the_forward_pass():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    resnet, calib = resnet20_calibration(4)
    x = calib.batches[0][0]
    for net, inp in ((model, torch.randn(2, 3, 6, 6)), (resnet, x)):
        with torch.no_grad():
            torch.testing.assert_close(build_program(net).forward(inp)[-1], net(inp), rtol=1e-4, atol=1e-4)


def test_unsupported_layers_and_options_raise():
    with pytest.raises(ConfigError, match="LRP rules exist for"):
        build_program(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    with pytest.raises(ConfigError, match="`rule` must be one of"):
        LayerRelevance(rule="alpha-beta")


def test_scores_on_resnet20_are_shares_with_group_scores():
    model, calib = resnet20_calibration(4)
    space = discover(model, quantizer=QuantizerConfig(group_size=32))
    sens = LayerRelevance(progress=False).estimate(model, calib, space)
    values = list(sens.scores.values())
    assert set(sens.scores) == set(space.names)
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert math.isclose(sum(values), 1.0, rel_tol=1e-9)
    groups = sens.group_scores
    assert groups["layer1.0.conv1"].shape == (16, 5)  # fan_in 144 in groups of 32
    for name, g in groups.items():  # a unit's groups share out its score
        assert math.isclose(float(g.sum()), sens.scores[name], rel_tol=1e-6)


def test_seeded_runs_are_identical():
    model, calib = resnet20_calibration(2)
    space = discover(model)
    a = LayerRelevance(progress=False, seed=3).estimate(model, calib, space).scores
    b = LayerRelevance(progress=False, seed=3).estimate(model, calib, space).scores
    assert a == b


@pytest.mark.slow
def test_scores_on_minilm_are_finite_and_non_negative():
    model, calib = minilm_calibration()
    space = discover(model, quantizer=QuantizerConfig(group_size=128))
    sens = LayerRelevance(progress=False).estimate(model, calib, space)
    assert sens.group_scores["encoder.layer.0.intermediate.dense"].shape == (1536, 3)
    assert set(sens.scores) == set(space.names)
    assert all(math.isfinite(v) and v >= 0 for v in sens.scores.values())
    name = "encoder.layer.0.attention.self.query"
    assert sens.scores[name] == sens.scores["encoder.layer.0.attention.self.value"]
    assert model.config._attn_implementation != "mpsearch_constant_attention"  # restored


def test_transformer_hooks_keep_values_and_linearize_gradients():
    from mpsearch.sensitivity._relevance_bert import _gelu_hook, _layernorm_hook

    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    ln, gelu = nn.LayerNorm(5).double(), nn.GELU()
    y = _layernorm_hook(ln, (x,), ln(x))
    torch.testing.assert_close(y, ln(x))
    g = _gelu_hook(gelu, (x,), gelu(x))
    torch.testing.assert_close(g, gelu(x))
    # gradient x input of the gated GELU gives back its output: the gate is a constant
    (grad,) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(grad * x, gelu(x).detach())
    # with std held constant, LayerNorm minus its bias is linear in x, so gradient x input conserves it
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    y = _layernorm_hook(ln, (x,), ln(x))
    (grad_ln,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close((grad_ln * x).sum(), (y - ln.bias).sum().detach())


def test_time_limit_stops_after_the_first_batch():
    model = bias_free_sequential().float()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    calib = Calibration.classification(x, y, batch_size=2)
    sens = LayerRelevance(progress=False, time_limit=1e-9).estimate(model, calib, discover(model))
    assert sens.details["batches_used"] == 1
