"""Tests for the Pareto dynamic program (mpsearch/solvers/dp.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.errors import ConfigError
from mpsearch.solvers import DPSolver, Status, solve
from mpsearch.solvers.pareto import ParetoFront, pareto


@pytest.mark.parametrize("seed", range(30))
def test_exact_at_integer_resources(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)  # storage bits are integers: the grid is exact
    probe = brute_force(costs, [Budget.avg_bits(1.0)])
    low, high = probe.min_usage["avg_bits"], probe.max_usage["avg_bits"]
    for frac in (0.0, 0.25, 0.6, 1.0):
        budget = Budget.avg_bits(low + frac * (high - low))
        result = solve(costs, budget, solver="dp")
        assert result.status is Status.OPTIMAL and result.info["grid_exact"]
        assert result.objective == pytest.approx(brute_force(costs, [budget]).objective, rel=1e-9, abs=1e-12)


def test_coarse_grid_stays_within_budget(random_table, brute_force) -> None:
    costs = random_table(5)
    budget = Budget(kind="bops", value=0.5 * sum(costs.resources["bops"].max(axis=1)))
    result = solve(costs, budget, solver=DPSolver(steps=50))
    assert not result.info["grid_exact"] and result.status is Status.FEASIBLE
    assert costs.usage(result.choice, budget) <= budget.value * (1 + 1e-9)
    assert result.bound <= brute_force(costs, [budget]).objective * (1 + 1e-9)


def test_front_in_one_pass_matches_per_budget_solves(random_table) -> None:
    costs = random_table(7)
    low = costs.min_usage(Budget.avg_bits(1.0))
    high = costs.max_usage(Budget.avg_bits(1.0))
    values = list(np.linspace(low * 0.9, high, 12))  # infeasible ones, then up to the largest useful
    front = pareto(costs, values, solver="dp")
    assert isinstance(front, ParetoFront) and len(front.results) == len(values)
    for value, r in zip(values, front.results):
        ilp = solve(costs, Budget.avg_bits(value), solver="ilp")
        assert r.status is ilp.status
        if ilp.choice is not None:
            assert r.objective == pytest.approx(ilp.objective, rel=1e-9, abs=1e-12)
    assert len(front.to_frame()) >= 3


def test_full_front_is_non_dominated(random_table) -> None:
    costs = random_table(2)
    front = DPSolver().front(costs, kind="avg_bits")
    frame = front.to_frame()
    assert len(frame) == len(front.results)  # every point of the full front is kept
    assert frame["avg_bits"].is_monotonic_increasing and frame["predicted_cost"].is_monotonic_decreasing


def test_bad_steps() -> None:
    with pytest.raises(ConfigError, match="`steps` must be a positive integer, but got steps=0"):
        DPSolver(steps=0)


def test_module_level_front(random_table) -> None:
    from mpsearch.solvers.dp import front

    costs = random_table(4)
    full = front(costs, "bytes")
    assert full.kind == "bytes" and all(r.status is Status.OPTIMAL for r in full.results)
    values = [r.budgets[0].value for r in full.results]
    assert values == sorted(values)
