"""SliM-LLM's per-unit rule against brute force on tiny group tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import ConfigError
from mpsearch.solvers.base import Status
from mpsearch.solvers.slim import PerUnitBudget, unit_knapsack

BITS = (2, 3, 4)
OVERHEAD = 24.0


def _table(rng, counts, sizes=None, convex=True):
    n = sum(counts)
    sizes = np.asarray(sizes if sizes is not None else rng.choice([8, 16], size=n), float)
    err = np.array([4.0 ** -b for b in BITS])[None, :] * rng.uniform(0.5, 2.0, (n, 1)) * sizes[:, None]
    cost = err * rng.lognormal(0, 1.5, (n, 1))
    if not convex:
        cost = cost * rng.uniform(0.2, 1.8, cost.shape)
    storage = sizes[:, None] * np.asarray(BITS, float)[None, :] + OVERHEAD
    units = tuple(f"u{i}" for i in range(len(counts)))
    return CostTable(items=GroupIndex(units, counts), bits=BITS, cost=cost, storage_bits=storage, n_weights=sizes)


def _brute(costs: CostTable, budget: float) -> float:
    total = 0.0
    for unit in costs.items.units:
        part = costs.items.unit_slice(unit)
        c, s, w = costs.cost[part], costs.storage_bits[part], costs.n_weights[part].sum()
        best = min((sum(c[g, x] for g, x in enumerate(xs)) for xs in itertools.product(range(len(BITS)), repeat=len(c))
                    if sum(s[g, x] for g, x in enumerate(xs)) <= budget * w * (1 + 1e-9)), default=None)
        assert best is not None
        total += best
    return total


@pytest.mark.parametrize("convex", [True, False])
def test_against_brute_force(convex):
    rng = np.random.default_rng(0 if convex else 1)
    optimal_seen, equal, solved = 0, 0, 0
    for _ in range(150):
        costs = _table(rng, counts=(int(rng.integers(1, 6)), int(rng.integers(1, 6))), convex=convex)
        budget = float(rng.uniform(2.0, 4.0)) + OVERHEAD / 12
        budget = min(budget, float(costs.max_usage(Budget.avg_bits(1.0))))  # above it: refused by every solver
        result = PerUnitBudget().solve(costs, Budget.avg_bits(budget))
        if result.status == Status.INFEASIBLE:
            continue
        best = _brute(costs, budget)
        for unit in costs.items.units:  # each unit meets the budget on its own
            part = costs.items.unit_slice(unit)
            used = costs.storage_bits[part][np.arange(part.stop - part.start), result.choice[part]].sum()
            assert used <= budget * costs.n_weights[part].sum() * (1 + 1e-9)
        assert result.bound <= best + 1e-9 * abs(best)
        assert result.objective >= best - 1e-9 * abs(best)
        solved += 1
        equal += result.objective <= best * (1 + 1e-9)
        if result.status == Status.OPTIMAL:
            optimal_seen += 1
            assert result.objective == pytest.approx(best, rel=1e-9)
    print(f"convex={convex}: {solved} solved, {equal} equal to brute force, {optimal_seen} proven optimal")
    assert optimal_seen >= 1 and equal >= optimal_seen and solved >= 100


def test_slim_window_is_optimal_with_equal_groups():
    """Equal group sizes, window 2/3/4, budget 3 + overhead: every unit averages exactly 3 bits, proven optimal."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        counts = (int(rng.integers(2, 7)), int(rng.integers(2, 7)))
        costs = _table(rng, counts, sizes=[16] * sum(counts))
        result = PerUnitBudget().solve(costs, Budget.avg_bits(3 + OVERHEAD / 16))
        assert result.status == Status.OPTIMAL
        assert result.objective == pytest.approx(_brute(costs, 3 + OVERHEAD / 16), rel=1e-9)
        for unit in costs.items.units:
            assert np.mean(np.asarray(BITS)[result.choice[costs.items.unit_slice(unit)]]) == pytest.approx(3.0)


def test_unit_knapsack_exact_small_case():
    cost = np.array([[10.0, 4.0, 3.0], [5.0, 1.0, 0.5]])
    storage = np.array([[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]])
    choice, bound, optimal = unit_knapsack(cost, storage, 5.0)  # room for one 1-bit step: the first group saves 6
    assert choice.tolist() == [1, 0] and optimal and bound == pytest.approx(9.0)
    assert unit_knapsack(cost, storage, 3.0) is None


def test_refuses_layer_tables():
    costs = CostTable(items=("a", "b"), bits=BITS, cost=np.ones((2, 3)), storage_bits=np.tile([2.0, 3.0, 4.0], (2, 1)),
                      n_weights=np.ones(2))
    with pytest.raises(ConfigError, match="group-granularity table"):
        PerUnitBudget().solve(costs, Budget.avg_bits(3.0))
