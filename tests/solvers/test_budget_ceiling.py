"""Budgets above the largest useful one (every unit at its widest choice) are rejected, by every
solver, the one-pass fronts and the Pareto sweep; a budget exactly at it is solved."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetError, BudgetTooLargeError
from mpsearch.solvers import SOLVERS, DPSolver, NSGA2Solver, TPESolver, solve
from mpsearch.solvers.greedy import widest
from mpsearch.solvers.pareto import pareto
from mpsearch.solvers.search import load_front

OPTIONS = {"tpe": {"n_trials": 20}, "nsga2": {"n_trials": 20, "population_size": 8}}
SOLVER_NAMES = ("ilp", "convex", "lagrange", "dp", "greedy", "tpe", "nsga2")


def table(bits=(2, 3, 4)) -> CostTable:
    """Four units, fp16 per-row scales: the all-widest plan stores slightly more than max(bits)."""
    n_weights = np.array([100, 200, 300, 400])
    storage = n_weights[:, None] * np.array(bits)[None, :] + 16.0 * np.array([[2], [4], [6], [8]])
    cost = np.array([[4.0, 2.0, 1.0]])[:, : len(bits)] * n_weights[:, None] / 100.0
    return CostTable(items=("a", "b", "c", "d"), bits=bits, cost=cost, storage_bits=storage,
                     n_weights=n_weights, resources={"bops": storage * 3.0})


def top(costs: CostTable, kind: str) -> float:
    return costs.max_usage(Budget(kind=kind, value=1.0))


def test_max_usage_is_the_all_widest_plan_and_brute_force(random_table, brute_force) -> None:
    costs = table()
    assert top(costs, "avg_bits") == pytest.approx((4 * 1000 + 16 * 20) / 1000)
    assert top(costs, "bytes") == pytest.approx((4 * 1000 + 16 * 20) / 8)
    for seed in range(8):  # pins, a tie, disallowed cells: the maximum over valid assignments
        costs = random_table(seed)
        probe = brute_force(costs, [Budget(kind=k, value=1e300) for k in ("avg_bits", "bytes", "bops")])
        for kind in ("avg_bits", "bytes", "bops"):
            assert top(costs, kind) == pytest.approx(probe.max_usage[kind], rel=1e-12)


@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("kind", ["avg_bits", "bytes", "bops"])
def test_every_solver_rejects_a_budget_above_the_largest_useful(name: str, kind: str) -> None:
    costs = table()
    limit = top(costs, kind)
    with pytest.raises(BudgetTooLargeError, match="must be at most the largest useful one") as err:
        solve(costs, Budget(kind=kind, value=limit * 1.2), solver=SOLVERS.get(name)(**OPTIONS.get(name, {})))
    message = str(err.value)
    digits = 7 if kind == "avg_bits" else 10
    assert f"{limit * 1.2:.{digits}g}" in message and f"at most {kind}={limit:.{digits}g}" in message
    assert isinstance(err.value, BudgetError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_a_budget_exactly_at_the_maximum_is_the_all_widest_plan(name: str) -> None:
    costs = table()
    for kind in ("avg_bits", "bytes"):
        result = solve(costs, Budget(kind=kind, value=top(costs, kind)), solver=SOLVERS.get(name)(**OPTIONS.get(name, {})))
        np.testing.assert_array_equal(result.choice, widest(costs.allowed))
        assert result.plan.bits == {"a": 4, "b": 4, "c": 4, "d": 4}


def test_float_rounding_of_the_maximum_is_tolerated() -> None:
    costs = table()
    limit = top(costs, "avg_bits")
    assert solve(costs, limit * (1 + 5e-7)).ok  # e.g. the maximum re-summed in another order
    assert solve(costs, float(f"{limit:.7g}")).ok  # the value the error message prints
    with pytest.raises(BudgetTooLargeError):
        solve(costs, limit * (1 + 1e-5))


def test_message_reads_like_the_rule_the_value_and_the_fix() -> None:
    costs = table(bits=(2, 4, 8))
    with pytest.raises(BudgetTooLargeError) as err:
        solve(costs, 9.5)
    assert str(err.value) == (
        "a budget must be at most the largest useful one, but an average-bits budget of 9.5 bits/weight is above "
        "8.32 bits/weight (every unit at its widest allowed choice, up to 8 bits). Lower it to at most "
        "avg_bits=8.32, or add wider bit choices."
    )
    with pytest.raises(BudgetTooLargeError, match=r"a bops budget of .* \(every unit at its most expensive allowed "
                       r"choice\)\. Lower it to at most bops=.*, or drop this budget\."):
        solve(costs, Budget(kind="bops", value=1e9))


def test_pins_and_ties_lower_the_maximum() -> None:
    base = table()
    allowed = np.ones((4, 3), bool)
    allowed[0] = [True, False, False]  # 'a' pinned to 2 bits
    costs = CostTable(items=base.items, bits=base.bits, cost=np.where(allowed, base.cost, np.nan),
                      storage_bits=base.storage_bits, n_weights=base.n_weights, allowed=allowed, ties=((1, 2),))
    limit = top(costs, "avg_bits")
    assert limit == pytest.approx((2 * 100 + 4 * 900 + 16 * 20) / 1000)
    assert solve(costs, limit).plan.bits == {"a": 2, "b": 4, "c": 4, "d": 4}
    with pytest.raises(BudgetTooLargeError):
        solve(costs, top(base, "avg_bits"))  # fine for the unpinned table, too much for this one


def test_several_budgets_each_checked() -> None:
    costs = table()
    fine = Budget.avg_bits(3.0)
    with pytest.raises(BudgetTooLargeError, match="a bytes budget of 1000000000 bytes is above 540 bytes"):
        solve(costs, [fine, Budget.bytes(1e9)])
    assert solve(costs, [fine, Budget.bytes(top(costs, "bytes"))]).ok


@pytest.mark.parametrize("solver", ["ilp", "dp", "nsga2"])
def test_pareto_rejects_any_value_above_before_solving(solver: str, monkeypatch) -> None:
    costs = table()
    calls: list[int] = []
    monkeypatch.setattr(type(SOLVERS.get("ilp")()), "_solve", lambda *a, **k: calls.append(1))
    engine = NSGA2Solver(n_trials=10, population_size=4) if solver == "nsga2" else solver
    with pytest.raises(BudgetTooLargeError, match=r"average-bits budget of 6 bits/weight"):
        pareto(costs, [2.5, 3.0, 6.0], solver=engine)
    assert calls == []


def test_one_pass_fronts_check_their_values(tmp_path) -> None:
    costs = table()
    with pytest.raises(BudgetTooLargeError):
        DPSolver().front(costs, [3.0, 5.0])
    with pytest.raises(BudgetTooLargeError):
        NSGA2Solver(n_trials=10, population_size=4).front(costs, [3.0, 5.0])
    with pytest.raises(BudgetTooLargeError):  # checked before the study is even opened
        load_front(costs, tmp_path / "missing.db", "never-written", budgets=[3.0, 5.0])
    full = DPSolver().front(costs)  # no values: every front point, nothing to check
    assert max(r.budgets[0].value for r in full.results) <= top(costs, "avg_bits") * (1 + 1e-9)
    assert TPESolver(n_trials=5).solve(costs, top(costs, "avg_bits")).ok


def test_pareto_up_to_the_maximum_ends_at_the_widest_plan() -> None:
    costs = table()
    front = pareto(costs, np.linspace(2.5, top(costs, "avg_bits"), 6), solver="ilp")
    assert front.results[-1].plan.bits == {"a": 4, "b": 4, "c": 4, "d": 4}


def test_default_sweeps_stay_within_the_table() -> None:
    from mpsearch.workflows.quickstart import FRONT_BUDGETS, default_sweep

    costs = table()  # widest choice 4 bits: the default 2:8 grid and the quickstart's 8-bit point must not trip
    grid = default_sweep(costs)
    assert grid[0] == 2.0 and grid[-1] == 4.25 and all(v <= top(costs, "avg_bits") for v in grid)
    assert max(default_sweep(costs, grid=FRONT_BUDGETS)) == 4.0
    for kind in ("bytes", "bops"):
        values = default_sweep(costs, kind)
        assert len(values) == 16 and values[-1] == pytest.approx(top(costs, kind))
        assert pareto(costs, values, kind=kind).results[-1].ok
