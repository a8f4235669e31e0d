"""16 bits as a width the solver may choose: a unit too sensitive to quantize stays in floating point
(discover(bits=(..., 16)) -> cost table -> solve -> fake-quant and packed models, sizes agreeing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BitsOutOfRangeError
from mpsearch.deploy.apply import apply
from mpsearch.deploy.evaluate import fake_quantize_model, plan_size
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.solvers import solve
from mpsearch.space.discover import discover
from mpsearch.space.quant_errors import quantization_errors

SENSITIVE = {"0": 1.0, "2": 1e6, "4": 1.0}  # a per-unit score: unit "2" cannot afford any quantization error


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()


@pytest.mark.parametrize("solver", ["ilp", "dp", "greedy"])
def test_the_solver_keeps_the_sensitive_unit_at_16_bits(solver: str) -> None:
    model = _net()
    space = discover(model, bits=(2, 4, 8, 16), pin_first_last=None)
    assert all(u.bits == (2, 4, 8, 16) for u in space.units)
    errors = quantization_errors(model, space)
    assert all(errors[u][16] == 0.0 for u in errors)  # floating point loses nothing
    costs = cost_table_from_space(space, {u: {b: SENSITIVE[u] * e for b, e in errs.items()} for u, errs in errors.items()})
    assert costs.bits == (2, 4, 8, 16) and costs.storage_bits[1, 3] == 64 * 64 * 16  # no scales at 16
    result = solve(costs, Budget.avg_bits(7.0), solver=solver)
    plan = result.plan
    assert plan.bits["2"] == 16 and plan.bits["0"] < 8 and plan.bits["4"] < 8
    assert costs.average_bits(result.choice) <= 7.0
    assert plan_size(model, plan).average_bits == pytest.approx(costs.average_bits(result.choice), rel=1e-12)
    x = torch.randn(3, 64)
    with torch.no_grad():
        fq, packed = fake_quantize_model(model, plan), apply(model, plan, backend="torch")
        assert torch.equal(fq[2].weight, model[2].weight) and isinstance(packed[2], nn.Linear)
        assert torch.allclose(packed(x), fq(x), atol=1e-5)


def test_sixteen_is_a_width_not_any_number() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"within 1\.\.8, or 16 \(kept in floating point\), but got bits=\(4, 12\)"):
        discover(_net(), bits=(4, 12))
    with pytest.raises(BitsOutOfRangeError, match="16 is also a choice"):
        CostTable(items=("a",), bits=(4, 12), cost=np.zeros((1, 2)), storage_bits=np.zeros((1, 2)), n_weights=[1])
