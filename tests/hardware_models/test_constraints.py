"""Hardware columns plug into the solvers and the Pareto sweep as budgets."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.hardware_models.bops import bops_column
from mpsearch.hardware_models.lut import LUTLatencyModel
from mpsearch.hardware_models.memory import bytes_packed_column
from mpsearch.hardware_models.roofline import latency_column
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.solvers import solve
from mpsearch.solvers.pareto import pareto
from mpsearch.space.discover import discover


@pytest.fixture(scope="module")
def hw_costs(resnet20, resnet20_shapes):
    space = discover(resnet20, bits=(2, 3, 4, 8))
    rng = np.random.default_rng(0)
    costs = cost_table_from_space(space, {u.name: {b: float(rng.random()) * 2.0 ** -b * u.n_weights for b in u.bits}
                                          for u in space.units})
    lut = LUTLatencyModel(bits=(2, 4, 8), shapes=[(16, 144), (64, 576), (384, 1536)], batches=[1, 64, 1024],
                          ms=np.array([[[0.01, 0.03, 0.3], [0.02, 0.2, 6.0], [0.03, 1.2, 25.0]]])
                          * np.array([1.0, 1.1, 1.3])[:, None, None])
    return costs.with_resources(latency_ms=lut.latency_column(costs, resnet20_shapes),
                                bops=bops_column(costs, resnet20_shapes),
                                bytes_packed=bytes_packed_column(costs, resnet20_shapes),
                                roofline_ms=latency_column(costs, resnet20_shapes, "t4", batch=64))


def test_latency_budget_is_respected(hw_costs):
    lo, hi = (f(Budget(kind="latency_ms", value=1.0)) for f in (hw_costs.min_usage, hw_costs.max_usage))
    for value in (lo + 0.05 * (hi - lo), lo + 0.3 * (hi - lo), hi):  # up to the largest useful budget
        result = solve(hw_costs, Budget(kind="latency_ms", value=value), solver="ilp")
        assert hw_costs.usage(result.choice, Budget(kind="latency_ms", value=value)) <= value * (1 + 1e-9)


def test_several_hardware_budgets_at_once(hw_costs):
    def between(kind, t):
        probe = Budget(kind=kind, value=1.0)
        return Budget(kind=kind, value=(1 - t) * hw_costs.min_usage(probe) + t * hw_costs.max_usage(probe))

    budgets = [between(k, 0.6) for k in ("latency_ms", "bops", "bytes_packed", "roofline_ms")]
    result = solve(hw_costs, budgets, solver="ilp")
    for b in budgets:
        assert hw_costs.usage(result.choice, b) <= b.value * (1 + 1e-9)


def test_pareto_front_on_latency(hw_costs):
    lo, hi = (f(Budget(kind="latency_ms", value=1.0)) for f in (hw_costs.min_usage, hw_costs.max_usage))
    front = pareto(hw_costs, [lo + t * (hi - lo) for t in (0.1, 0.4, 0.8)], kind="latency_ms")
    frame = front.to_frame()
    assert len(frame) >= 2 and np.all(frame["latency_ms"] <= frame["budget"] * (1 + 1e-9))
    assert np.all(np.diff(frame["predicted_cost"].to_numpy()) < 0)
