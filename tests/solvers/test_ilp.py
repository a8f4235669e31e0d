"""Tests for the exact ILP solver (mpsearch/solvers/ilp.py) against brute-forced optima."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetError, InfeasibleBudgetError, MPSearchError, UnknownNameError
from mpsearch.core.plan import BitPlan
from mpsearch.solvers import ILPSolver, SolveResult, Status, get_solver, solve

SEEDS = range(30)
KINDS = ("avg_bits", "bytes", "bops")


def usage(costs: CostTable, choice: np.ndarray, kind: str) -> float:
    rows = np.arange(costs.n_items)
    if kind == "avg_bits":
        return float(costs.storage_bits[rows, choice].sum() / costs.n_weights.sum())
    if kind == "bytes":
        return float(costs.storage_bits[rows, choice].sum() / 8.0)
    return float(costs.resources[kind][rows, choice].sum())


def assert_valid(costs: CostTable, result: SolveResult, budgets: list[Budget]) -> None:
    """An allowed, tie-respecting assignment that meets every budget."""
    choice = result.choice
    assert choice is not None and choice.shape == (costs.n_items,)
    assert costs.allowed[np.arange(costs.n_items), choice].all()
    for group in costs.ties:
        assert len({int(choice[i]) for i in group}) == 1
    for b in budgets:
        assert usage(costs, choice, b.kind) <= b.value * (1 + 1e-9) + 1e-12


def between(low: float, high: float, frac: float) -> float:
    return low + frac * (high - low) if high > low else low


# ---- known answers ------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_brute_force_single_budget(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)
    rng = np.random.default_rng(1000 + seed)
    kind = KINDS[seed % 3]
    probe = brute_force(costs, [Budget(kind=kind, value=1.0)])
    low, high = probe.min_usage[kind], probe.max_usage[kind]
    for frac in (0.1, 0.45, 0.8, float(rng.uniform())):
        budget = Budget(kind=kind, value=between(low, high, frac))
        ref = brute_force(costs, [budget])
        result = solve(costs, budget)
        assert result.status is Status.OPTIMAL
        assert result.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
        assert result.objective == pytest.approx(costs.objective(result.choice), rel=1e-12)
        assert_valid(costs, result, [budget])
        assert result.gap == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_brute_force_two_budgets(seed: int, random_table, brute_force) -> None:
    costs = random_table(seed)
    rng = np.random.default_rng(2000 + seed)
    probe = brute_force(costs, [Budget.avg_bits(1.0), Budget(kind="bops", value=1.0)])
    budgets = [
        Budget.avg_bits(between(probe.min_usage["avg_bits"], probe.max_usage["avg_bits"], float(rng.uniform(0.3, 1)))),
        Budget(kind="bops", value=between(probe.min_usage["bops"], probe.max_usage["bops"], float(rng.uniform(0.3, 1)))),
    ]
    ref = brute_force(costs, budgets)
    result = solve(costs, budgets)
    if ref.objective is None:
        assert result.status is Status.INFEASIBLE and result.choice is None
    else:
        assert result.status is Status.OPTIMAL
        assert result.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
        assert_valid(costs, result, budgets)
        assert set(result.usage) == {"avg_bits", "bops"}


def test_random_cases_are_not_trivial(random_table, brute_force) -> None:
    """Guard for the brute-force tests: the seeds cover ties, pins, and budgets that bind."""
    tables = [random_table(s) for s in SEEDS]
    assert sum(bool(t.ties) for t in tables) >= 8
    assert sum(bool((t.allowed.sum(axis=1) == 1).any()) for t in tables) >= 10
    binding = 0
    for costs in tables:
        free = brute_force(costs, [Budget.avg_bits(100.0)])
        probe = brute_force(costs, [Budget.avg_bits(1.0)])
        tight = brute_force(costs, [Budget.avg_bits(between(probe.min_usage["avg_bits"], probe.max_usage["avg_bits"], 0.45))])
        binding += tight.objective > free.objective * (1 + 1e-9)
    assert binding >= 20


def test_both_budgets_can_bind(brute_force) -> None:
    """avg_bits and bops favour different items: the joint optimum is worse than either alone."""
    costs = CostTable(
        items=("a", "b"), bits=(2, 8), cost=np.array([[5.0, 0.0], [6.0, 0.0]]),
        storage_bits=np.array([[2.0, 8.0], [20.0, 80.0]]), n_weights=np.array([1, 10]),
        resources={"bops": np.array([[100.0, 400.0], [1.0, 4.0]])},
    )
    budgets = [Budget.avg_bits(3.0), Budget(kind="bops", value=110.0)]
    alone = [solve(costs, b) for b in budgets]
    assert [r.bits for r in alone] == [{"a": 8, "b": 2}, {"a": 2, "b": 8}]
    assert [r.objective for r in alone] == [6.0, 5.0]
    result = solve(costs, budgets)
    assert result.bits == {"a": 2, "b": 2} and result.objective == 11.0
    assert result.objective == brute_force(costs, budgets).objective


def test_two_budgets_of_the_same_kind(random_table, brute_force) -> None:
    costs = random_table(3)
    probe = brute_force(costs, [Budget.avg_bits(1.0)])
    mid = between(probe.min_usage["avg_bits"], probe.max_usage["avg_bits"], 0.5)
    budgets = [Budget.avg_bits(mid * 1.5), Budget.avg_bits(mid)]
    result = solve(costs, budgets)
    assert result.objective == pytest.approx(brute_force(costs, budgets).objective, rel=1e-9)
    assert_valid(costs, result, budgets)


# ---- infeasible and at the edge -------------------------------------------------
@pytest.mark.parametrize("seed", range(0, 30, 3))
@pytest.mark.parametrize("kind", KINDS)
def test_infeasible_budget_reports_smallest_feasible(seed: int, kind: str, random_table, brute_force) -> None:
    costs = random_table(seed)
    smallest = brute_force(costs, [Budget(kind=kind, value=1.0)]).min_usage[kind]
    budget = Budget(kind=kind, value=smallest * 0.98)
    result = solve(costs, budget)
    assert result.status is Status.INFEASIBLE
    assert result.choice is None and result.objective is None and not result.ok
    assert result.usage == {}
    assert result.min_feasible[kind] == pytest.approx(smallest, rel=1e-12)
    with pytest.raises(InfeasibleBudgetError, match=rf"is infeasible\. Raise it to {kind} >= {re.escape(f'{smallest:.6g}')}"):
        _ = result.plan
    with pytest.raises(InfeasibleBudgetError, match="the budget must be at least the smallest feasible one"):
        _ = result.bits


@pytest.mark.parametrize("seed", range(1, 30, 3))
@pytest.mark.parametrize("kind", KINDS)
def test_budget_exactly_at_min_feasible_is_feasible(seed: int, kind: str, random_table, brute_force) -> None:
    costs = random_table(seed)
    smallest = brute_force(costs, [Budget(kind=kind, value=1.0)]).min_usage[kind]
    assert costs.min_usage(Budget(kind=kind, value=1.0)) == pytest.approx(smallest, rel=1e-12)
    budget = Budget(kind=kind, value=costs.min_usage(Budget(kind=kind, value=1.0)))
    result = solve(costs, budget)
    assert result.status is Status.OPTIMAL
    assert_valid(costs, result, [budget])
    assert usage(costs, result.choice, kind) == pytest.approx(smallest, rel=1e-9)
    assert result.objective == pytest.approx(brute_force(costs, [budget]).objective, rel=1e-9)


def test_budget_just_below_a_plans_usage() -> None:
    # regression: CBC accepted (4, 4) within its ~1e-6 tolerance and Solver.solve raised
    # "returned a plan over budget; this is a bug"
    costs = CostTable(
        items=("a", "b"), bits=(2, 4), cost=np.array([[1.0, 0.0], [1.0, 0.0]]),
        storage_bits=np.array([[2.0, 4.0], [2.0, 4.0]]), n_weights=np.array([1, 1]),
    )
    for eps in (1e-5, 1e-6, 1e-7, 1e-8):
        result = solve(costs, Budget.avg_bits(4.0 - eps))  # (4, 4) uses exactly 4.0 bits
        assert result.status is Status.OPTIMAL
        assert result.objective == 1.0 and sorted(result.bits.values()) == [2, 4]


def test_jointly_infeasible_budgets(brute_force) -> None:
    """Each budget alone is feasible, together they are not: the error says so."""
    costs = CostTable(
        items=("a",), bits=(2, 4), cost=np.array([[1.0, 0.0]]), storage_bits=np.array([[2.0, 4.0]]),
        n_weights=np.array([1]), resources={"bops": np.array([[4.0, 2.0]])},
    )
    budgets = [Budget.avg_bits(3.0), Budget(kind="bops", value=3.0)]
    assert brute_force(costs, budgets).objective is None
    assert all(solve(costs, b).status is Status.OPTIMAL for b in budgets)
    result = solve(costs, budgets)
    assert result.status is Status.INFEASIBLE and result.choice is None
    assert result.min_feasible == {"avg_bits": 2.0, "bops": 2.0}
    with pytest.raises(
        InfeasibleBudgetError,
        match=r"budgets must be met together, but 3 bits/weight, bops <= 3 are each feasible alone "
        r"\(floors avg_bits >= 2, bops >= 2\) and infeasible together\. Raise one of them",
    ):
        _ = result.plan


def test_budget_just_below_a_near_tight_plan_is_still_optimal(brute_force) -> None:
    cost = np.array([[6.5, np.nan], [0.3, 0.06], [0.83, 0.19], [4.1, 1.9]])
    costs = CostTable(
        items=("a", "b", "c", "d"), bits=(3, 5), cost=cost,
        storage_bits=4 * np.array([[0.11, 0.19], [1.14, 1.89], [0.82, 1.32], [1.01, 1.68]]),
        n_weights=np.array([1, 1, 1, 1]), allowed=~np.isnan(cost),
    )
    near_tight = 0.11 + 1.89 + 0.82 + 1.01  # avg bits of plan (3, 5, 3, 3)
    budget = Budget.avg_bits(near_tight * (1 - 1e-7))
    ref = brute_force(costs, [budget])
    assert ref.objective == pytest.approx(9.53) and ref.choice.tolist() == [0, 0, 0, 1]
    result = solve(costs, budget)
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(ref.objective, rel=1e-9)


# ---- determinism, time limit, options -------------------------------------------
def test_same_input_gives_same_plan(random_table) -> None:
    # many equal-cost optima: identical items
    costs = CostTable(
        items=tuple(f"u{i}" for i in range(8)), bits=(2, 4, 8), cost=np.tile([4.0, 1.0, 0.0], (8, 1)),
        storage_bits=np.tile([2.0, 4.0, 8.0], (8, 1)), n_weights=np.ones(8, int),
    )
    first = solve(costs, Budget.avg_bits(4.0))
    second = solve(costs, Budget.avg_bits(4.0))
    third = ILPSolver().solve(costs, Budget.avg_bits(4.0))
    np.testing.assert_array_equal(first.choice, second.choice)
    np.testing.assert_array_equal(first.choice, third.choice)
    assert first.plan.to_json() == second.plan.to_json() == third.plan.to_json()
    table = random_table(7)
    budget = Budget.avg_bits(table.min_usage(Budget.avg_bits(1.0)) * 1.2)
    assert solve(table, budget).plan.to_json() == solve(table, budget).plan.to_json()


def large_table(n: int = 300) -> CostTable:
    rng = np.random.default_rng(0)
    bits = (2, 3, 4, 8)
    n_weights = rng.integers(100, 5000, size=n)
    return CostTable(
        items=tuple(f"u{i}" for i in range(n)), bits=bits,
        cost=np.sort(rng.random((n, 4)), axis=1)[:, ::-1] * rng.lognormal(0, 2, size=(n, 1)),
        storage_bits=n_weights[:, None] * np.array(bits) + rng.integers(16, 512, size=(n, 1)),
        n_weights=n_weights,
    )


def check_time_limited(costs: CostTable, result: SolveResult, budget: Budget) -> None:
    assert result.status in (Status.OPTIMAL, Status.TIME_LIMIT)
    if result.choice is not None:
        assert_valid(costs, result, [budget])
        assert result.gap is not None and result.gap >= 0.0
        assert isinstance(result.plan, BitPlan)
    else:
        assert result.status is Status.TIME_LIMIT
        with pytest.raises(InfeasibleBudgetError):
            _ = result.plan


def test_generous_time_limit_is_optimal(random_table, brute_force) -> None:
    costs = random_table(4)
    budget = Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.25)
    result = solve(costs, budget, time_limit=30.0)
    assert result.status is Status.OPTIMAL
    assert result.objective == pytest.approx(brute_force(costs, [budget]).objective, rel=1e-9)


def test_tiny_time_limit_returns_valid_result_or_time_limit() -> None:
    # regression: with no incumbent, LP-relaxation values were rounded into an over-budget plan
    costs = large_table()
    budget = Budget.avg_bits(3.4)  # here the relaxation's split item rounds up, over the budget
    check_time_limited(costs, solve(costs, budget, time_limit=0.001), budget)


@pytest.mark.parametrize("backend", ["highs", "cbc"])
def test_no_incumbent_at_time_limit_gives_no_plan(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend stops before its first integer plan and no other solver has one: no plan, a valid bound."""
    import pulp

    from mpsearch.solvers import _backends, ilp

    original = pulp.LpProblem.solve

    def relaxation_then_not_solved(self, solver=None, **kwargs):
        # what CBC reports when the time limit hits before the first integer solution
        for v in self.variables():
            v.cat = pulp.LpContinuous
        original(self, solver, **kwargs)
        self.status = pulp.LpStatusNotSolved
        self.sol_status = pulp.LpSolutionNoSolutionFound
        return self.status

    monkeypatch.setattr(pulp.LpProblem, "solve", relaxation_then_not_solved)
    monkeypatch.setattr(ilp, "solve_highs", lambda prog, **kw: _backends.Outcome("time_limit", "highs"))
    monkeypatch.setattr(ilp, "heuristic_plans", lambda *args: [])
    costs = CostTable(
        items=("a", "b"), bits=(2, 4), cost=np.array([[1.0, 0.0], [1.0, 0.0]]),
        storage_bits=np.array([[2.0, 4.0], [2.0, 4.0]]), n_weights=np.array([1, 1]),
    )
    budget = Budget.avg_bits(3.6)  # LP relaxation: x4a + x4b = 1.6, so some x4 > 0.5 in each item
    result = solve(costs, budget, time_limit=1.0, backend=backend)
    check_time_limited(costs, result, budget)
    assert result.status is Status.TIME_LIMIT and result.choice is None
    assert result.bound == pytest.approx(0.4)  # the LP relaxation's optimum, a valid lower bound
    with pytest.raises(InfeasibleBudgetError, match=r"'ilp' hit its time limit before the first\. Give it more time"):
        _ = result.plan


def test_time_limit_result_invariants_with_incumbent() -> None:
    """A time limit that leaves room for a plan: the plan is valid and no better than the optimum."""
    costs = large_table()
    budget = Budget.avg_bits(3.3)
    result = solve(costs, budget, time_limit=5.0)
    check_time_limited(costs, result, budget)
    assert result.choice is not None
    full = solve(costs, budget)
    assert result.objective >= full.objective * (1 - 1e-9)


def test_relative_gap_option_stays_within_gap(random_table, brute_force) -> None:
    for seed in (11, 12, 13):
        costs = random_table(seed)
        probe = brute_force(costs, [Budget.avg_bits(1.0)])
        budget = Budget.avg_bits(between(probe.min_usage["avg_bits"], probe.max_usage["avg_bits"], 0.5))
        best = brute_force(costs, [budget]).objective
        result = solve(costs, budget, gap=0.2)
        assert result.status in (Status.OPTIMAL, Status.FEASIBLE)
        assert_valid(costs, result, [budget])
        assert result.objective <= best * 1.2 + 1e-12
        assert result.gap is not None and result.gap >= 0.0 and result.bound <= best * (1 + 1e-9)
        if result.status is Status.OPTIMAL:  # certified by another route: then it is the optimum
            assert result.objective == pytest.approx(best, rel=1e-9)


# ---- the result and its plan ---------------------------------------------------
def test_result_plan(random_table) -> None:
    costs = random_table(5)
    budget = Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.2)
    result = solve(costs, budget)
    plan = result.plan
    assert isinstance(plan, BitPlan)
    assert set(plan.bits) == set(costs.items)
    assert plan.bits == result.bits == {n: costs.bits[int(c)] for n, c in zip(costs.items, result.choice)}
    assert plan.meta["solver"] == "ilp" and result.solver == "ilp"
    assert plan.meta["budget"] == [{"kind": "avg_bits", "value": budget.value}]
    assert plan.meta["objective"] == result.objective
    assert plan.meta["seed"] == 5  # the table's own meta is carried over
    np.testing.assert_array_equal(costs.choice_of(plan), result.choice)
    assert result.gap == 0.0 and result.bound == result.objective
    assert result.info["backend"] in ("cbc", "highs")
    assert result.seconds >= 0.0
    assert result.usage["avg_bits"] == pytest.approx(usage(costs, result.choice, "avg_bits"))


def test_all_pinned_table() -> None:
    costs = CostTable(
        items=("a", "b"), bits=(4, 8), cost=np.array([[np.nan, 1.0], [2.0, np.nan]]),
        storage_bits=np.array([[4.0, 8.0], [4.0, 8.0]]), n_weights=np.array([1, 1]),
        allowed=np.array([[False, True], [True, False]]),
    )
    result = solve(costs, 6.0)
    assert result.status is Status.OPTIMAL and result.bits == {"a": 8, "b": 4}
    assert result.objective == 3.0


def test_zero_costs() -> None:
    costs = CostTable(
        items=("a", "b"), bits=(2, 8), cost=np.zeros((2, 2)), storage_bits=np.array([[2.0, 8.0], [2.0, 8.0]]),
        n_weights=np.array([1, 1]),
    )
    result = solve(costs, 2.0)
    assert result.status is Status.OPTIMAL and result.bits == {"a": 2, "b": 2} and result.objective == 0.0
    assert result.gap == 0.0


def test_budget_forms(random_table) -> None:
    costs = random_table(2)
    value = costs.min_usage(Budget.avg_bits(1.0)) * 1.3
    by_budget = solve(costs, Budget.avg_bits(value)).choice
    np.testing.assert_array_equal(solve(costs, value).choice, by_budget)
    np.testing.assert_array_equal(solve(costs, f"{value!r}bits").choice, by_budget)
    np.testing.assert_array_equal(solve(costs, Budget.avg_bits(value), solver=ILPSolver(backend="cbc")).choice, by_budget)


# ---- errors ------------------------------------------------------------------------
def test_unknown_solver_name_lists_ilp(random_table) -> None:
    with pytest.raises(UnknownNameError, match=r"solver must be one of \[.*'ilp'.*\], but got 'nope'"):
        solve(random_table(0), 4.0, solver="nope")
    with pytest.raises(KeyError):
        get_solver("nope")


def test_bad_solver_argument() -> None:
    with pytest.raises(MPSearchError, match=r"`solver` must be a name among \[.*'ilp'.*\] or a Solver instance, but got 3"):
        get_solver(3)  # type: ignore[arg-type]
    with pytest.raises(MPSearchError, match="solver options go to the constructor when you pass an instance"):
        get_solver(ILPSolver(), gap=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "gurobi"}, r"`backend` must be 'auto', 'cbc' or 'highs', but got 'gurobi'"),
        ({"gap": 1.0}, r"`gap` must be within \[0, 1\), but got gap=1\.0"),
        ({"gap": -0.1}, r"`gap` must be within \[0, 1\), but got gap=-0\.1"),
    ],
)
def test_bad_ilp_options(kwargs: dict, message: str) -> None:
    with pytest.raises(MPSearchError, match=message):
        ILPSolver(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("highspy") is not None, reason="highspy is installed")
def test_highs_backend_without_highspy(random_table) -> None:
    with pytest.raises(MPSearchError, match="backend 'highs' needs the highspy package"):
        solve(random_table(0), random_table(0).max_usage(Budget.avg_bits(1.0)), backend="highs")


def test_not_a_cost_table() -> None:
    with pytest.raises(MPSearchError, match="`costs` must be a CostTable, but got dict"):
        solve({"a": 1}, 4.0)  # type: ignore[arg-type]


def test_unknown_budget_kind(random_table) -> None:
    with pytest.raises(BudgetError, match=r"but got kind='latency_ms'"):
        solve(random_table(0), Budget(kind="latency_ms", value=1.0))


def test_capabilities() -> None:
    assert ILPSolver.exact is True and ILPSolver.multi_objective is False
    assert ILPSolver.requires == ("highspy", "pulp") and ILPSolver.is_available()
    assert ILPSolver.name == "ilp"
