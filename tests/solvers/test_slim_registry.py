"""SliM-LLM's rule is the registered solver "slim": by name, through `solve`, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import BudgetTooLargeError, ConfigError
from mpsearch.solvers import SOLVERS, PerUnitBudget, Status, get_solver, solve

BITS = (2, 3, 4)


def _table(seed: int = 0) -> CostTable:
    rng = np.random.default_rng(seed)
    counts = (3, 5)
    n = sum(counts)
    err = np.array([4.0 ** -b for b in BITS])[None, :] * rng.uniform(0.5, 2.0, (n, 1)) * 16
    storage = np.tile(16 * np.asarray(BITS, float) + 24, (n, 1))
    return CostTable(items=GroupIndex(("a", "b"), counts), bits=BITS, cost=err * rng.lognormal(0, 1, (n, 1)),
                     storage_bits=storage, n_weights=np.full(n, 16.0),
                     quantizer={"scheme": "affine", "group_size": 16})


def test_registered_by_name():
    assert "slim" in SOLVERS and SOLVERS.get("slim") is PerUnitBudget
    solver = get_solver("slim", seed=4)
    assert isinstance(solver, PerUnitBudget) and solver.name == "slim"
    assert isinstance(PerUnitBudget.contract_skip, str) and "per-unit" in PerUnitBudget.contract_skip


def test_solve_by_name_equals_the_instance_and_keeps_every_unit_at_the_budget():
    costs = _table()
    budget = Budget.avg_bits(3 + 24 / 16)
    by_name = solve(costs, budget, solver="slim")
    direct = PerUnitBudget().solve(costs, budget)
    assert by_name.status == Status.OPTIMAL and np.array_equal(by_name.choice, direct.choice)
    for unit in costs.items.units:
        widths = np.asarray(BITS)[by_name.choice[costs.items.unit_slice(unit)]]
        assert widths.mean() == pytest.approx(3.0)
    assert by_name.plan.meta["solver"] == "slim"


def test_refusals_name_the_rule():
    costs = _table()
    with pytest.raises(ConfigError, match="group-granularity table"):
        solve(costs, Budget.bytes(costs.max_usage(Budget.bytes(1.0))), solver="slim")
    with pytest.raises(BudgetTooLargeError):
        solve(costs, Budget.avg_bits(costs.max_usage(Budget.avg_bits(1.0)) * 1.1), solver="slim")
