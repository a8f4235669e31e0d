"""The contract every sensitivity estimator must pass (shipped, so third-party estimators can run it).

Each check takes an estimator *factory* (``factory(**options) -> Estimator``) and
raises ``AssertionError`` when the contract is broken. They run on a small conv
net with batch norm, in training mode, with labeled batches:

* scores finite and non-negative for every unit, and only for units,
* the same seed gives the same scores (and group scores),
* the model is left as found: weights and buffers, training flag,
  ``requires_grad`` flags, and no ``.grad`` written,
* group scores of shape (out, n_blocks) per unit on a grouped space when the
  estimator ``supports_groups``, and ``None`` otherwise,
* ``progress=False`` works, and the result makes a valid cost table.

Use it from pytest over every registered estimator::

    import pytest
    from mpsearch.sensitivity import ESTIMATORS
    from mpsearch.testing.estimators import CONTRACT_CHECKS, contract_names, registry_factory

    @pytest.mark.parametrize("name", contract_names())
    @pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda c: c.__name__)
    def test_contract(name, check):
        check(registry_factory(name))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.kernels.quantize import num_groups
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity.base import ESTIMATORS, Estimator
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import SearchSpace, discover

Factory = Callable[..., Estimator]
GROUP_SIZE = 8


def contract_net() -> nn.Module:
    """Conv-BN-ReLU-Conv-ReLU-pool-Linear with fixed random weights and non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        net[1].running_mean.copy_(torch.randn(6, generator=gen) * 0.1)
        net[1].running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    return net.train()


def contract_data() -> Calibration:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 6, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)
    return Calibration.classification(x, y, batch_size=8)


def contract_space(model: nn.Module, grouped: bool = False) -> SearchSpace:
    quantizer = QuantizerConfig(scheme="affine", group_size=GROUP_SIZE if grouped else None)
    return discover(model, pin_first_last=None, bits=(2, 4, 8), quantizer=quantizer)


def registry_factory(name: str) -> Factory:
    """A factory for a registered estimator that applies its ``quick_options`` under any given options."""
    cls = ESTIMATORS.get(name)

    def factory(**options: Any) -> Estimator:
        merged = {"progress": False, **dict(getattr(cls, "quick_options", {})), **options}
        return cls(**merged)

    return factory


def contract_names() -> list[str]:
    """Registered estimators the generic contract can feed (``contract_skip`` is None)."""
    return [n for n in ESTIMATORS.names() if getattr(ESTIMATORS.get(n), "contract_skip", None) is None]


def check_scores_finite_non_negative(factory: Factory) -> None:
    model = contract_net()
    space = contract_space(model)
    sens = factory(seed=0).estimate(model, contract_data(), space)
    assert set(sens.scores) == set(space.names), f"scores must cover exactly the units {space.names}, got {sorted(sens.scores)}"
    for name, value in sens.scores.items():
        assert np.isfinite(value) and value >= 0, f"score of {name!r} must be finite and >= 0, got {value!r}"


def check_seeded_determinism(factory: Factory) -> None:
    model = contract_net()
    space = contract_space(model, grouped=True)
    a = factory(seed=5).estimate(model, contract_data(), space)
    b = factory(seed=5).estimate(model, contract_data(), space)
    assert dict(a.scores) == dict(b.scores), "the same seed must give the same scores"
    if a.group_scores is not None:
        for name in a.group_scores:
            assert np.array_equal(a.group_scores[name], b.group_scores[name]), f"group scores of {name!r} differ"


def check_model_left_as_found(factory: Factory) -> None:
    model = contract_net()
    frozen = {n for n, p in model.named_parameters() if n.startswith("1.")}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    factory(seed=0).estimate(model, contract_data(), contract_space(model))
    assert model.training, "the estimator must restore the training flag"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the estimator must not change {k!r}"
    for n, p in model.named_parameters():
        assert p.grad is None, f"the estimator must not write .grad of {n!r}"
        assert p.requires_grad == (n not in frozen), f"the estimator must restore requires_grad of {n!r}"


def check_group_scores_shapes(factory: Factory) -> None:
    model = contract_net()
    space = contract_space(model, grouped=True)
    estimator = factory(seed=0)
    sens = estimator.estimate(model, contract_data(), space)
    if not estimator.supports_groups:
        assert sens.group_scores is None, "an estimator without supports_groups must leave group_scores None"
        return
    assert sens.group_scores is not None and set(sens.group_scores) == set(space.names), "group scores must cover every unit"
    for unit in space.units:
        expected = (unit.out_features, num_groups(unit.fan_in, space.quantizer))
        got = sens.group_scores[unit.name]
        assert got.shape == expected, f"group scores of {unit.name!r} must have shape {expected}, got {got.shape}"
        assert np.all(np.isfinite(got)) and np.all(got >= 0), f"group scores of {unit.name!r} must be finite and >= 0"
    flat = contract_space(model)
    assert factory(seed=0).estimate(model, contract_data(), flat).group_scores is None, "no group size: no group scores"


def check_quiet_and_cost_table(factory: Factory) -> None:
    model = contract_net()
    space = contract_space(model, grouped=True)
    sens = factory(seed=0, progress=False).estimate(model, contract_data(), space)
    table = build_cost_table(model, space, sens)
    assert np.all(np.isfinite(table.cost)) and np.all(table.cost >= 0), "costs must be finite and >= 0"
    expected = "group" if sens.group_scores is not None and sens.unit_costs is None else None
    assert table.meta.get("granularity") == expected


CONTRACT_CHECKS = (
    check_scores_finite_non_negative,
    check_seeded_determinism,
    check_model_left_as_found,
    check_group_scores_shapes,
    check_quiet_and_cost_table,
)

__all__ = [
    "CONTRACT_CHECKS",
    "check_group_scores_shapes",
    "check_model_left_as_found",
    "check_quiet_and_cost_table",
    "check_scores_finite_non_negative",
    "check_seeded_determinism",
    "contract_data",
    "contract_names",
    "contract_net",
    "contract_space",
    "registry_factory",
]
