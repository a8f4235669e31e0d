"""A solver stopped by its time limit returns the best valid plan so far and says so."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers import Status, solve


def table(n: int = 30) -> CostTable:
    rng = np.random.default_rng(0)
    bits = np.array([2, 3, 4, 8])
    sizes = rng.integers(100, 1000, n)
    cost = rng.lognormal(0, 1, (n, 1)) * sizes[:, None] * 2.0 ** (-2 * bits[None, :])
    return CostTable(items=tuple(f"u{i}" for i in range(n)), bits=tuple(bits), cost=cost,
                     storage_bits=sizes[:, None] * bits[None, :].astype(float), n_weights=sizes)


@pytest.mark.parametrize("solver", ["tpe", "nsga2"])
def test_search_at_its_time_limit_returns_a_valid_plan_and_says_so(solver):
    costs = table()
    budget = Budget.avg_bits(3.5)
    result = solve(costs, budget, solver=solver, time_limit=0.5, n_trials=10**6)
    assert result.status is Status.TIME_LIMIT
    assert result.choice is not None and costs.usage(result.choice, budget) <= 3.5 * (1 + 1e-9)
    assert result.plan.bits  # a usable plan, not an error
    assert result.info["trials"] < 10**6


def test_search_that_finishes_in_time_is_not_marked_time_limit():
    result = solve(table(), Budget.avg_bits(3.5), solver="tpe", time_limit=60, n_trials=20)
    assert result.status is Status.FEASIBLE
