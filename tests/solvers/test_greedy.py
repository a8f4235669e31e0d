"""Tests for the AIMET-style greedy baseline (mpsearch/solvers/greedy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers import GreedySolver, Status, solve


def test_lowers_the_least_sensitive_item_first() -> None:
    costs = CostTable(
        items=("sensitive", "robust"), bits=(4, 8), cost=np.array([[10.0, 0.0], [1.0, 0.0]]),
        storage_bits=np.array([[4.0, 8.0], [4.0, 8.0]]), n_weights=np.array([1, 1]),
    )
    result = solve(costs, 6.0, solver="greedy")
    assert result.bits == {"sensitive": 8, "robust": 4} and result.status is Status.FEASIBLE
    assert solve(costs, 8.0, solver="greedy").bits == {"sensitive": 8, "robust": 8}


@pytest.mark.parametrize("seed", range(20))
def test_valid_under_two_budgets(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)
    probe = brute_force(costs, [Budget.avg_bits(1.0), Budget(kind="bops", value=1.0)])
    budgets = [
        Budget.avg_bits(0.5 * (probe.min_usage["avg_bits"] + probe.max_usage["avg_bits"])),
        Budget(kind="bops", value=0.6 * probe.min_usage["bops"] + 0.4 * probe.max_usage["bops"]),
    ]
    result = solve(costs, budgets, solver=GreedySolver())
    ref = brute_force(costs, budgets)
    if result.choice is not None:
        for b in budgets:
            assert costs.usage(result.choice, b) <= b.value * (1 + 1e-9)
        assert result.objective >= ref.objective * (1 - 1e-9) - 1e-12
    else:
        assert result.status is Status.INFEASIBLE


def test_within_stated_gap_of_optimum_on_random_tables(random_table, brute_force) -> None:
    """A baseline, not an optimizer: on average within 5 % of the optimum at mid budgets."""
    excess = []
    for seed in range(30):
        costs = random_table(seed)
        probe = brute_force(costs, [Budget.avg_bits(1.0)])
        budget = Budget.avg_bits(0.5 * (probe.min_usage["avg_bits"] + probe.max_usage["avg_bits"]))
        ref = brute_force(costs, [budget]).objective
        excess.append((solve(costs, budget, solver="greedy").objective - ref) / max(ref, 1e-12))
    assert np.mean(excess) < 0.05


def test_descent_path_runs_from_widest_to_narrowest(random_table) -> None:
    from mpsearch.solvers.base import reduce
    from mpsearch.solvers.greedy import descent_path, widest

    costs = random_table(9)
    red = reduce(costs, (Budget.avg_bits(1.0),))
    path = descent_path(np.where(red.allowed, red.cost, np.inf), red.matrices[0], red.allowed)
    np.testing.assert_array_equal(path[0], widest(red.allowed))
    used = [float(red.matrices[0][np.arange(len(p)), p].sum()) for p in path]
    assert all(b < a for a, b in zip(used, used[1:]))
    assert used[-1] == pytest.approx(costs.min_usage(Budget.avg_bits(1.0)), rel=1e-9)
