"""Tests for the Lagrangian / convex-hull solver (mpsearch/solvers/lagrange.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.errors import ConfigError, CostTableError
from mpsearch.solvers import LagrangeSolver, Status, lagrange_solve, solve

SEEDS = range(30)


@pytest.mark.parametrize("seed", SEEDS)
def test_bound_below_optimum_and_plan_within_budget(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)
    probe = brute_force(costs, [Budget.avg_bits(1.0)])
    low, high = probe.min_usage["avg_bits"], probe.max_usage["avg_bits"]
    for frac in (0.0, 0.2, 0.5, 0.8, 1.0):
        budget = Budget.avg_bits(low + frac * (high - low))
        ref = brute_force(costs, [budget])
        result = solve(costs, budget, solver="lagrange")
        assert result.choice is not None and costs.usage(result.choice, budget) <= budget.value * (1 + 1e-9)
        assert result.bound <= ref.objective * (1 + 1e-9) + 1e-12  # certified: never above the optimum
        assert result.objective >= ref.objective * (1 - 1e-9) - 1e-12
        if frac == 1.0:
            assert result.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)


def test_gap_is_small_on_many_items() -> None:
    rng = np.random.default_rng(0)
    n, bits = 20_000, np.array([2.0, 3.0, 4.0, 8.0])
    s = rng.lognormal(0, 2, n)
    cost = (s[:, None] * 64 * 2.0 ** (-2 * bits)).astype(np.float32)
    res = np.ascontiguousarray(np.broadcast_to((64 * bits + 32).astype(np.float32), (n, 4)))
    sol = lagrange_solve(cost, res, (3.5 * 64 + 32) * n)
    assert sol.used <= (3.5 * 64 + 32) * n
    assert 0.0 <= sol.gap < 1e-3 and sol.bound <= sol.objective


def test_float32_inputs_are_not_copied_and_match_float64() -> None:
    rng = np.random.default_rng(1)
    cost = rng.random((500, 3)).astype(np.float32)
    cost.sort(axis=1)
    cost = np.ascontiguousarray(cost[:, ::-1])
    res = np.tile(np.array([2.0, 4.0, 8.0], np.float32), (500, 1))
    a = lagrange_solve(cost, res, 2000.0)
    b = lagrange_solve(cost.astype(np.float64), res.astype(np.float64), 2000.0)
    np.testing.assert_array_equal(a.choice, b.choice)


def test_example_and_infeasible() -> None:
    cost = np.array([[4.0, 1.0, 0.0], [9.0, 2.0, 0.5]])
    res = np.array([[2.0, 4.0, 8.0], [2.0, 4.0, 8.0]])
    sol = lagrange_solve(cost, res, 10.0)
    assert sol.choice.tolist() == [1, 1] and sol.objective == 3.0 and sol.used == 8.0
    # LP: both at 4 bits (8 used) and half of item 1's 4 -> 8 segment (saves 1.5) uses all 10
    assert sol.bound == pytest.approx(3.0 - 0.5 * 1.5) and sol.multiplier == pytest.approx(1.5 / 4)
    none = lagrange_solve(cost, res, 3.0)
    assert none.choice is None and none.min_resource == 4.0
    everything = lagrange_solve(cost, res, 100.0)
    assert everything.choice.tolist() == [2, 2] and everything.gap == 0.0


def test_disallowed_choices_and_bad_input() -> None:
    cost = np.array([[4.0, 1.0, np.inf], [9.0, 2.0, 0.5]])
    res = np.array([[2.0, 4.0, 8.0], [2.0, 4.0, 8.0]])
    allowed = np.array([[True, False, True], [True, True, True]])
    sol = lagrange_solve(cost, res, 100.0, allowed=allowed)
    assert sol.choice.tolist() == [0, 2]
    with pytest.raises(CostTableError, match="must be items x choices of one shape"):
        lagrange_solve(cost, res[:1], 10.0)
    with pytest.raises(CostTableError, match="item 0 has none"):
        lagrange_solve(np.array([[np.nan, np.inf]]), np.array([[1.0, 2.0]]), 10.0)


def test_status_and_bound_on_result(random_table) -> None:
    costs = random_table(3)
    result = LagrangeSolver().solve(costs, Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.2))
    assert result.status in (Status.OPTIMAL, Status.FEASIBLE)
    assert result.gap is not None and result.info["multiplier"] >= 0
    assert LagrangeSolver.requires == ("numba",) and not LagrangeSolver.exact


def test_several_budgets_are_refused(random_table) -> None:
    costs = random_table(0)
    with pytest.raises(ConfigError, match="must get exactly one budget, but got 2"):
        solve(costs, [Budget.avg_bits(costs.max_usage(Budget.avg_bits(1.0))),
                      Budget.bytes(costs.max_usage(Budget.bytes(1.0)))], solver="lagrange")


def test_core_and_exchange_polish_reach_the_ilp_on_layer_tables() -> None:
    """Layer-wise tables have few items: the polished plan matches the ILP (0.5 % target)."""
    from mpsearch.core.costs import CostTable

    rng = np.random.default_rng(4)
    n, bits = 24, np.array([2, 3, 4, 8])
    n_weights = rng.integers(500, 40_000, n)
    cost = rng.lognormal(0, 2, (n, 1)) * n_weights[:, None] * 2.0 ** (-2 * bits) * rng.uniform(0.7, 1.4, (n, 4))
    costs = CostTable(items=tuple(f"l{i}" for i in range(n)), bits=tuple(bits), cost=cost,
                      storage_bits=n_weights[:, None] * bits + 256, n_weights=n_weights)
    for value in (2.6, 3.0, 3.5, 4.0, 5.0, 6.0):
        exact = solve(costs, value, solver="ilp").objective
        assert solve(costs, value, solver="lagrange").objective <= exact * 1.005
        raw = solve(costs, value, solver=LagrangeSolver(polish=False))
        assert raw.objective >= exact * (1 - 1e-9)
