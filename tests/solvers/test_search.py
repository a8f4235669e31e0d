"""Tests for the Optuna searches (mpsearch/solvers/search.py): TPE under budgets, NSGA-II fronts."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.errors import ConfigError
from mpsearch.solvers import NSGA2Solver, Status, TPESolver, solve
from mpsearch.solvers.pareto import pareto
from mpsearch.solvers.search import load_front, storage_url


def test_tpe_finds_the_optimum_of_a_small_table(random_table, brute_force) -> None:
    costs = random_table(1)
    budget = Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.3)
    result = solve(costs, budget, solver=TPESolver(n_trials=80, seed=0))
    assert result.status is Status.FEASIBLE and result.info["trials"] == 80
    assert costs.usage(result.choice, budget) <= budget.value * (1 + 1e-9)
    assert result.objective <= brute_force(costs, [budget]).objective * 1.05 + 1e-12


def test_tpe_respects_two_budgets(random_table, brute_force) -> None:
    costs = random_table(4)
    probe = brute_force(costs, [Budget.avg_bits(1.0), Budget(kind="bops", value=1.0)])
    budgets = [Budget.avg_bits(0.5 * (probe.min_usage["avg_bits"] + probe.max_usage["avg_bits"])),
               Budget(kind="bops", value=0.5 * (probe.min_usage["bops"] + probe.max_usage["bops"]))]
    result = solve(costs, budgets, solver="tpe", n_trials=30)
    if result.choice is not None:
        assert all(costs.usage(result.choice, b) <= b.value * (1 + 1e-9) for b in budgets)


def test_user_callback_is_the_objective(random_table) -> None:
    costs = random_table(2)
    seen: list[dict] = []

    def evaluate(bits):  # "measures the model": here, prefers few 8-bit items
        seen.append(dict(bits))
        return float(sum(b for b in bits.values()))

    budget = Budget.avg_bits(costs.max_usage(Budget.avg_bits(1.0)))  # the largest useful: no limit
    result = solve(costs, budget, solver=TPESolver(n_trials=20, evaluate=evaluate))
    assert len(seen) == 20 and set(seen[0]) == set(costs.items)
    assert result.info["measured"] == min(sum(s.values()) for s in seen)
    assert result.objective == costs.objective(result.choice)  # the table's prediction, for reference


def test_nsga2_front_and_pareto_hook(random_table) -> None:
    costs = random_table(6)
    low, high = costs.min_usage(Budget.avg_bits(1.0)), costs.max_usage(Budget.avg_bits(1.0))
    front = pareto(costs, [low * 0.9, low, (low + high) / 2, high], solver=NSGA2Solver(n_trials=60, population_size=10))
    statuses = [r.status for r in front.results]
    assert statuses[0] is Status.INFEASIBLE and all(s is Status.FEASIBLE for s in statuses[1:])
    frame = front.to_frame()
    assert frame["predicted_cost"].is_monotonic_decreasing
    full = NSGA2Solver(n_trials=30, population_size=10).front(costs)
    assert len(full.front) >= 2


def test_nsga2_solve_is_seeded(random_table) -> None:
    costs = random_table(8)
    budget = Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.4)
    a = solve(costs, budget, solver=NSGA2Solver(n_trials=30, population_size=8, seed=3))
    b = solve(costs, budget, solver=NSGA2Solver(n_trials=30, population_size=8, seed=3))
    np.testing.assert_array_equal(a.choice, b.choice)


def test_sqlite_storage_by_path(tmp_path, random_table) -> None:
    costs = random_table(3)
    path = tmp_path / "study.db"
    assert storage_url(path) == f"sqlite:///{path.resolve()}" and storage_url(None) is None
    assert storage_url("postgresql://u@h/db") == "postgresql://u@h/db"
    NSGA2Solver(n_trials=12, population_size=6, storage=path, study_name="s").front(costs)
    NSGA2Solver(n_trials=12, population_size=6, storage=path, study_name="s", seed=1).front(costs)
    front = load_front(costs, path, "s")
    assert path.exists() and len(front.front) >= 2


def test_time_limit_stops_early(random_table) -> None:
    costs = random_table(0)
    result = solve(costs, costs.max_usage(Budget.avg_bits(1.0)), solver=TPESolver(n_trials=100_000), time_limit=1.0)
    assert result.info["trials"] < 100_000 and result.seconds < 30


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_trials": 0}, r"`n_trials` must be a positive integer, but got n_trials=0"),
    ({"evaluate": 3}, r"`evaluate` must be a callable bits -> float, but got 3"),
])
def test_bad_options(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TPESolver(**kwargs)
    with pytest.raises(ConfigError, match=r"`population_size` must be an integer >= 2"):
        NSGA2Solver(population_size=1)
