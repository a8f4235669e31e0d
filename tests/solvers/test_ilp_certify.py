"""How the ILP's answer is checked: exact reductions, the float64 bound, lying and failing backends."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from test_ilp_exact import all_plans, optimum, random_budgets, wide_table

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers import ILPSolver, Status, solve
from mpsearch.solvers import ilp as ilp_module
from mpsearch.solvers._backends import Outcome
from mpsearch.solvers._certify import heuristic_plans, lagrangian_bound
from mpsearch.solvers._reduce import caps, program, reductions
from mpsearch.solvers.base import reduce


def merged_optimum(red, keep: np.ndarray) -> float | None:
    """Brute force over the merged items, using only the kept choices."""
    best = None
    rows = np.arange(red.cost.shape[0])
    for combo in itertools.product(*[np.flatnonzero(keep[r]) for r in rows]):
        choice = np.array(combo)
        if all(math.fsum(m[rows, choice]) <= cap for m, cap in zip(red.matrices, caps(red))):
            value = math.fsum(red.cost[rows, choice])
            best = value if best is None else min(best, value)
    return best


def instance(seed: int):
    costs = wide_table(seed)
    budgets = random_budgets(costs, all_plans(costs), np.random.default_rng(seed + 10**6))
    return costs, tuple(budgets), reduce(costs, budgets)


@pytest.mark.parametrize("block", range(3))
def test_reductions_keep_an_optimal_plan(block: int) -> None:
    for seed in range(block * 40, block * 40 + 40):
        costs, budgets, red = instance(seed)
        plans = heuristic_plans(costs, budgets, red)
        reference = plans[0][1] if plans else None
        keep, lifted = reductions(red, reference)
        full = merged_optimum(red, red.allowed)
        if keep is None:
            assert full is None, seed
            continue
        assert merged_optimum(red, keep) == pytest.approx(full, rel=1e-12), seed
        if lifted is not None:  # the reference moved onto kept choices, no dearer, still within the budgets
            assert keep[np.arange(len(lifted)), lifted].all()
            assert red.cost[np.arange(len(lifted)), lifted].sum() <= red.cost[np.arange(len(reference)), reference].sum()


@pytest.mark.parametrize("block", range(3))
def test_lagrangian_bound_is_a_valid_lp_bound(block: int) -> None:
    from scipy.optimize import linprog

    for seed in range(block * 40, block * 40 + 40):
        costs, budgets, red = instance(seed)
        keep, _ = reductions(red, None)
        if keep is None:
            continue
        best = optimum(costs, all_plans(costs), list(budgets))
        if best is None:  # jointly infeasible: no optimum to bound
            continue
        unit = max(abs(best), 1e-300) * 10.0 ** (seed % 3 - 1)  # within a decade of the optimum, as the solver's
        prog = program(red, keep, scale=unit)
        bound = lagrangian_bound(prog)
        assert bound <= best + 1e-9 * abs(best), seed
        # the LP relaxation of the untouched table, by scipy: the Lagrangian dual attains it
        rows, cols = np.nonzero(red.allowed)
        eq = np.zeros((red.cost.shape[0], len(rows)))
        eq[rows, np.arange(len(rows))] = 1.0
        lp = linprog(red.cost[rows, cols], A_ub=np.array([m[rows, cols] for m in red.matrices]), b_ub=caps(red),
                     A_eq=eq, b_eq=np.ones(len(eq)), bounds=(0, 1), method="highs")
        assert bound >= lp.fun - 1e-7 * max(abs(lp.fun), abs(best)), seed  # reductions only tighten the LP


def small_table() -> CostTable:
    """Seven items whose costs are close enough that the reductions leave the program work to do."""
    rng = np.random.default_rng(5)
    n, bits = 7, (2, 4, 8)
    n_weights = rng.integers(100, 1000, size=n)
    cost = rng.uniform(1, 3, size=(n, 1)) * np.array([[1.0, 0.3, 0.1]]) * rng.uniform(0.8, 1.25, size=(n, 3))
    return CostTable(items=tuple(f"u{i}" for i in range(n)), bits=bits, cost=cost,
                     storage_bits=n_weights[:, None] * np.array(bits)[None, :], n_weights=n_weights)


def test_a_bound_the_plan_contradicts_is_not_certified(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that claims a bound above its own plan's cost: the claim is dropped, the plan kept."""
    real = ilp_module.solve_highs

    def liar(prog, **kwargs):
        out = real(prog, **kwargs)
        return Outcome(out.status, out.backend, out.choice, out.bound + 0.05, out.info)

    monkeypatch.setattr(ilp_module, "solve_highs", liar)
    costs, budget = small_table(), Budget.avg_bits(4.0)
    result = ILPSolver(backend="highs").solve(costs, budget)
    truth = optimum(costs, all_plans(costs), [budget])
    assert result.status is Status.FEASIBLE and "refuted" in result.info
    assert result.objective == pytest.approx(truth, rel=1e-12)
    assert result.bound <= truth * (1 + 1e-12)  # the float64 Lagrangian bound, not the claim


def test_a_suboptimal_plan_claimed_optimal_is_beaten_and_not_certified(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that returns the narrowest plan as optimal: another solver's plan wins, status feasible."""
    calls = []

    def narrowest(prog, **kwargs):
        calls.append(1)
        used = sum(prog.budget_rows)
        values = np.zeros(len(prog.rows))
        for r in np.unique(prog.rows):
            at = np.flatnonzero(prog.rows == r)
            values[at[np.argmin(used[at])]] = 1.0
        return Outcome("optimal", "highs", prog.choice(values), float(prog.obj @ values))

    monkeypatch.setattr(ilp_module, "solve_highs", narrowest)
    costs, budget = small_table(), Budget.avg_bits(5.0)
    result = ILPSolver(backend="highs").solve(costs, budget)
    truth = optimum(costs, all_plans(costs), [budget])
    assert calls and result.status is Status.FEASIBLE
    assert "refuted" in result.info and result.info["plan_from"] != "highs"
    assert result.objective == pytest.approx(truth, rel=1e-12)


def test_an_over_budget_plan_is_re_solved_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    real, rhs_seen = ilp_module.solve_highs, []

    def first_overshoots(prog, **kwargs):
        rhs_seen.append(kwargs["rhs"])
        if len(rhs_seen) == 1:  # every item at its widest kept choice, "within tolerance"
            used = sum(prog.budget_rows)
            values = np.zeros(len(prog.rows))
            for r in np.unique(prog.rows):
                at = np.flatnonzero(prog.rows == r)
                values[at[np.argmax(used[at])]] = 1.0
            return Outcome("optimal", "highs", prog.choice(values), 0.0)
        return real(prog, **kwargs)

    monkeypatch.setattr(ilp_module, "solve_highs", first_overshoots)
    monkeypatch.setattr(ilp_module, "heuristic_plans", lambda *args: [])
    costs, budget = small_table(), Budget.avg_bits(4.0)
    result = ILPSolver(backend="highs").solve(costs, budget)
    assert rhs_seen[0] == 1.0 and rhs_seen[1] < 1.0  # re-solved with the row tightened
    assert costs.average_bits(result.choice) <= 4.0 * (1 + 1e-9)
    assert result.objective == pytest.approx(optimum(costs, all_plans(costs), [budget]), rel=1e-9)


def test_highs_failure_falls_back_to_cbc(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(prog, **kwargs):
        raise RuntimeError("simulated HiGHS crash")

    monkeypatch.setattr(ilp_module, "solve_highs", broken)
    monkeypatch.setattr(ilp_module, "heuristic_plans", lambda *args: [])
    costs, budget = small_table(), Budget.avg_bits(4.0)
    result = solve(costs, budget)
    assert result.info["backend"] == "cbc" and result.status is Status.OPTIMAL
    assert result.info["backend_errors"][0]["backend"] == "highs"
    assert "simulated HiGHS crash" in result.info["backend_errors"][0]["message"]
    assert result.objective == pytest.approx(optimum(costs, all_plans(costs), [budget]), rel=1e-9)
    with pytest.raises(Exception, match="simulated HiGHS crash"):  # backend='highs' alone has no fallback
        ILPSolver(backend="highs").solve(costs, budget)


def test_time_limit_without_a_backend_plan_returns_another_solvers_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ilp_module, "solve_highs", lambda prog, **kw: Outcome("time_limit", "highs"))
    costs, budget = small_table(), Budget.avg_bits(4.0)
    result = ILPSolver(backend="highs").solve(costs, budget, time_limit=1.0)
    truth = optimum(costs, all_plans(costs), [budget])
    assert result.choice is not None and costs.average_bits(result.choice) <= 4.0 * (1 + 1e-9)
    if result.status is not Status.OPTIMAL:  # unless the reductions alone prove it
        assert result.status is Status.TIME_LIMIT and result.bound <= truth * (1 + 1e-12)
    else:
        assert result.objective == pytest.approx(truth, rel=1e-9)
