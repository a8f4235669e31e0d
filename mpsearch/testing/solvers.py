"""The contract every solver must pass, shipped so that a user's own solver can run it too.

>>> # from mpsearch.testing.solvers import check_solver
>>> # check_solver(lambda seed: MySolver(seed=seed))   # raises AssertionError on a breach

Checks, on small random tables with pins and ties:

- budget respected and plan valid (allowed widths, ties shared, objective and
  usage consistent, status, seconds, gap >= 0 where a bound is given);
- infeasible budgets reported as a status with the smallest feasible budget,
  and the plan raising :class:`~mpsearch.core.errors.InfeasibleBudgetError`;
- a budget above the largest useful one (every unit at its widest choice) raising
  :class:`~mpsearch.core.errors.BudgetTooLargeError`, and one exactly at it solved;
- the same seed gives the same plan, byte for byte;
- exact solvers (``exact = True``) match brute force, and a bound never
  exceeds the brute-force optimum.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetTooLargeError, InfeasibleBudgetError
from mpsearch.solvers.base import Solver, SolveResult, Status

SEEDS = tuple(range(6))


def contract_table(seed: int) -> CostTable:
    """A small random table: 3..6 items, 2..4 widths, integer storage, pins, sometimes a tie."""
    rng = np.random.default_rng(10_000 + seed)
    n = int(rng.integers(3, 7))
    c = int(rng.integers(2, 5))
    bits = tuple(sorted(int(b) for b in rng.choice(np.arange(1, 9), size=c, replace=False)))
    n_weights = rng.integers(16, 2048, size=n)
    cost = rng.lognormal(0, 1.5, size=(n, 1)) * np.sort(rng.random((n, c)), axis=1)[:, ::-1]
    storage = n_weights[:, None] * np.array(bits)[None, :] + 16 * rng.integers(1, 9, size=(n, 1))
    allowed = np.ones((n, c), bool)
    pinned = rng.integers(n)
    allowed[pinned] = False
    allowed[pinned, -1] = True
    ties = ((0, 1),) if seed % 2 and pinned not in (0, 1) else ()
    return CostTable(
        items=tuple(f"layer{i}" for i in range(n)), bits=bits, cost=np.where(allowed, cost, np.nan),
        storage_bits=storage, n_weights=n_weights, allowed=allowed, ties=ties, meta={"seed": seed},
    )


def brute_force(costs: CostTable, budget: Budget) -> float | None:
    """The optimum over every allowed, tie-respecting assignment (None when none fits)."""
    rows = np.arange(costs.n_items)
    mat = budget.matrix(costs)
    best = None
    for combo in itertools.product(*[np.flatnonzero(costs.allowed[i]) for i in range(costs.n_items)]):
        choice = np.array(combo)
        if any(len(set(choice[list(g)].tolist())) > 1 for g in costs.ties):
            continue
        if mat[rows, choice].sum() <= budget.value * (1 + 1e-9) + 1e-12:
            value = float(np.where(costs.allowed, costs.cost, 0.0)[rows, choice].sum())
            best = value if best is None else min(best, value)
    return best


def check_valid(costs: CostTable, result: SolveResult) -> None:
    """A result with a plan: allowed widths, ties shared, budgets met, fields consistent."""
    assert result.status in (Status.OPTIMAL, Status.FEASIBLE, Status.TIME_LIMIT), result.status
    choice = result.choice
    assert choice is not None and choice.shape == (costs.n_items,) and choice.dtype == np.int64
    assert costs.allowed[np.arange(costs.n_items), choice].all(), "a width the item does not allow"
    for group in costs.ties:
        assert len({int(choice[i]) for i in group}) == 1, "tied items got different widths"
    for b in result.budgets:
        assert costs.usage(choice, b) <= b.value * (1 + 1e-9) + 1e-12, f"over budget: {b}"
    assert result.objective == costs.objective(choice)
    assert result.seconds >= 0.0
    if result.bound is not None:
        assert result.gap is not None and result.gap >= 0.0
    assert set(result.plan.bits) >= set(costs.items)


def check_budget_respected(make: Callable[[int], Solver]) -> None:
    for seed in SEEDS:
        costs = contract_table(seed)
        low = costs.min_usage(Budget.avg_bits(1.0))
        high = costs.max_usage(Budget.avg_bits(1.0))
        for t in (0.0, 0.15, 0.5, 1.0):  # from the smallest feasible to the largest useful budget
            budget = Budget.avg_bits(low + t * (high - low))
            result = make(0).solve(costs, budget)
            check_valid(costs, result)
            best = brute_force(costs, budget)
            if result.bound is not None:
                assert result.bound <= best * (1 + 1e-9) + 1e-12, f"bound {result.bound} above the optimum {best}"
            if type(make(0)).exact and result.status is Status.OPTIMAL:
                assert abs(result.objective - best) <= 1e-9 * abs(best) + 1e-12, f"{result.objective} != optimum {best}"


def check_infeasible(make: Callable[[int], Solver]) -> None:
    for seed in SEEDS[:3]:
        costs = contract_table(seed)
        for kind in ("avg_bits", "bytes"):
            floor = costs.min_usage(Budget(kind=kind, value=1.0))
            result = make(0).solve(costs, Budget(kind=kind, value=floor * 0.97))
            assert result.status is Status.INFEASIBLE and result.choice is None and not result.ok
            assert abs(result.min_feasible[kind] - floor) <= 1e-12 * floor
            try:
                _ = result.plan
            except InfeasibleBudgetError as err:
                assert "Raise it to" in str(err)
            else:  # pragma: no cover - the breach this checks for
                raise AssertionError("an infeasible result must raise InfeasibleBudgetError for its plan")
            at_floor = make(0).solve(costs, Budget(kind=kind, value=floor))
            check_valid(costs, at_floor)


def check_ceiling(make: Callable[[int], Solver]) -> None:
    for seed in SEEDS[:2]:
        costs = contract_table(seed)
        for kind in ("avg_bits", "bytes"):
            top = costs.max_usage(Budget(kind=kind, value=1.0))
            check_valid(costs, make(0).solve(costs, Budget(kind=kind, value=top)))
            try:
                make(0).solve(costs, Budget(kind=kind, value=top * 1.01))
            except BudgetTooLargeError as err:
                assert "must be at most the largest useful one" in str(err), str(err)
            else:  # pragma: no cover - the breach this checks for
                raise AssertionError("a budget above the largest useful one must raise BudgetTooLargeError")


def check_seeded(make: Callable[[int], Solver]) -> None:
    for seed in SEEDS[:3]:
        costs = contract_table(seed)
        budget = Budget.avg_bits(costs.min_usage(Budget.avg_bits(1.0)) * 1.3)
        for solver_seed in (0, 1):
            first = make(solver_seed).solve(costs, budget)
            second = make(solver_seed).solve(costs, budget)
            assert first.plan.to_json() == second.plan.to_json(), "the same seed gave different plans"


def check_solver(make: Callable[[int], Solver]) -> None:
    """Run the whole contract; ``make(seed)`` returns a fresh solver with that seed."""
    assert isinstance(make(0), Solver)
    for attr in ("exact", "multi_objective", "requires", "name"):
        assert hasattr(type(make(0)), attr), f"solver classes must declare {attr!r}"
    check_budget_respected(make)
    check_infeasible(make)
    check_ceiling(make)
    check_seeded(make)


__all__ = [
    "brute_force",
    "check_budget_respected",
    "check_ceiling",
    "check_infeasible",
    "check_seeded",
    "check_solver",
    "check_valid",
    "contract_table",
]
