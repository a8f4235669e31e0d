"""Tests for the BAQ closed form (mpsearch/solvers/convex.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers import ConvexSolver, solve
from mpsearch.solvers.convex import fit_scale, water_fill


def test_fit_scale_recovers_an_exponential_model() -> None:
    bits = np.array([[2.0, 3.0, 4.0, 8.0]])
    a = np.array([3.0, 0.5])
    cost = a[:, None] * 2.0 ** (-2 * bits)
    np.testing.assert_allclose(fit_scale(cost, bits, np.ones((2, 4), bool)), a)


def test_water_filling_equalizes_marginal_loss() -> None:
    a, w = np.array([1.0, 16.0, 256.0]), np.ones(3)
    b = water_fill(a, w, np.zeros(3), np.full(3, 0.0), np.full(3, 16.0), 12.0)
    assert b.sum() == pytest.approx(12.0, abs=1e-6)
    np.testing.assert_allclose(np.diff(b), [2.0, 2.0], atol=1e-6)  # 0.5 * log2(16) apart
    clipped = water_fill(a, w, np.zeros(3), np.full(3, 3.0), np.full(3, 4.0), 11.0)
    np.testing.assert_allclose(clipped, [3.0, 4.0, 4.0], atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_within_budget_and_bound_below_optimum(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)
    probe = brute_force(costs, [Budget.avg_bits(1.0)])
    low, high = probe.min_usage["avg_bits"], probe.max_usage["avg_bits"]
    for frac in (0.0, 0.3, 0.7):
        budget = Budget.avg_bits(low + frac * (high - low))
        ref = brute_force(costs, [budget])
        result = solve(costs, budget, solver="convex")
        assert costs.usage(result.choice, budget) <= budget.value * (1 + 1e-9)
        assert result.bound <= ref.objective * (1 + 1e-9) + 1e-12
        assert result.objective >= ref.objective * (1 - 1e-9) - 1e-12


def test_near_optimal_on_exponential_costs() -> None:
    """On costs that follow the model, the closed form is within 2 % of the ILP."""
    rng = np.random.default_rng(0)
    n, bits = 40, np.array([2, 3, 4, 8])
    n_weights = rng.integers(1000, 50_000, n)
    cost = rng.lognormal(0, 2, (n, 1)) * n_weights[:, None] * 2.0 ** (-2 * bits)
    costs = CostTable(items=tuple(f"l{i}" for i in range(n)), bits=tuple(bits), cost=cost,
                      storage_bits=n_weights[:, None] * bits + 512, n_weights=n_weights)
    for value in (2.5, 3.0, 4.0, 5.0):
        exact = solve(costs, value, solver="ilp").objective
        approx = solve(costs, value, solver=ConvexSolver())
        assert approx.objective <= exact * 1.02
        assert approx.info["continuous_bits"].shape == (n,)
